"""Quality sampling: score sampled production answers against a reference revision, judge each revision
(judge.py), and act on it (worker.py). The gateway's side is controlplane/gateway/sampling.py."""
