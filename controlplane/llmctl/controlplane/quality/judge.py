"""The quality judgement of one revision, as a pure function of its scored samples (no SQL, no I/O).

Each sample is a pair scored by the reference on the same prompt: the served answer and the reference's
own answer, each with two scores (mean log-likelihood per token; fraction of tokens that are the
reference's top-1 choice). d = served - reference is what serving this revision instead of the reference
costs on that prompt; pairing removes how hard the prompt itself is. After every scored sample, over the
revision's latest `window` pairs, two one-sided Wilcoxon signed-rank tests ask whether the median loss
exceeds its tolerance: H0 median(d) >= -tolerance against H1 median(d) < -tolerance, for the
log-likelihood (the deployment's threshold, nats per token) and for top-1 agreement (top1_tolerance).
docs/quality.md says why this test and how the numbers were chosen (benchmarks/quality_calibration.py).

False alarms: a look says `degraded` when either p-value is below degraded_alpha / 2, so one look has at
most degraded_alpha chance of a false `degraded`, and N looks at most N * degraded_alpha (Bonferroni,
whatever the looks' correlation): 2e-4 per look keeps it under 5% over 250 looks. `watch` uses a looser
bound: it is a heads-up on the dashboard, never an action.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import median

from llmctl.controlplane.db.models import QualityState


@dataclass(frozen=True)
class ScoredPair:
    mean_logprob: float
    top1: float
    baseline_mean_logprob: float
    baseline_top1: float


@dataclass(frozen=True)
class JudgePolicy:
    window: int = 100
    """The latest pairs of the revision that are tested."""
    min_samples: int = 10
    """No verdict but `ok` before this many scored pairs."""
    top1_tolerance: float = 0.1
    """Tolerated median loss of top-1 agreement (a fraction of the answer's tokens)."""
    watch_alpha: float = 0.01
    degraded_alpha: float = 2e-4


@dataclass(frozen=True)
class Verdict:
    state: QualityState
    samples: int
    p_value: float | None
    """The smaller of the two tests' p-values."""
    median_logprob_change: float | None
    """median(served - reference) of the mean log-likelihood per token, nats (negative: less likely)."""
    median_top1_change: float | None

    def details(self, threshold: float) -> dict[str, object]:
        if self.p_value is None:
            summary = f"{self.samples} scored sample(s), too few to judge"
        else:
            summary = (f"median change over {self.samples} samples: log-likelihood "
                       f"{self.median_logprob_change:+.3f} nats/token (tolerance {threshold:g}), top-1 "
                       f"{self.median_top1_change:+.3f}; p={self.p_value:.2g}")
        return {"samples": self.samples, "p_value": self.p_value, "threshold": threshold,
                "median_logprob_change": self.median_logprob_change,
                "median_top1_change": self.median_top1_change, "summary": summary}


def judge(pairs: list[ScoredPair], threshold: float, policy: JudgePolicy = JudgePolicy()) -> Verdict:
    """The state of a revision from its scored pairs, oldest first; threshold: the tolerated median loss
    of mean log-likelihood per token, in nats."""
    window = pairs[-policy.window:]
    if len(window) < policy.min_samples:
        return Verdict(QualityState.OK, len(window), None, None, None)
    logprob = [p.mean_logprob - p.baseline_mean_logprob for p in window]
    top1 = [p.top1 - p.baseline_top1 for p in window]
    p = min(_loss_p_value(logprob, threshold), _loss_p_value(top1, policy.top1_tolerance))
    # Two tests at each look: each gets half of the look's alpha.
    state = (QualityState.DEGRADED if p < policy.degraded_alpha / 2
             else QualityState.WATCH if p < policy.watch_alpha / 2 else QualityState.OK)
    return Verdict(state, len(window), p, median(logprob), median(top1))


def _loss_p_value(changes: list[float], tolerance: float) -> float:
    """One-sided Wilcoxon signed-rank p-value for H1: the median change is below -tolerance."""
    shifted = [c + tolerance for c in changes]
    if all(x > 0 for x in shifted):
        return 1.0  # every sample is within tolerance: nothing to test
    from scipy import stats

    p = float(stats.wilcoxon(shifted, alternative="less", zero_method="zsplit").pvalue)
    return 1.0 if math.isnan(p) else p

