"""Loaded at start-up by every guidellm process that benchmarks/load.py starts (it puts this folder first on
PYTHONPATH; guidellm's workers are spawned, so they inherit it): one JSON line per HTTP answer guidellm gets,
with its status and Retry-After header, appended to $LLMCTL_LOAD_TAP.

guidellm's report keeps only `repr(exc)` of a failed request (the status line), never the headers, so it
cannot tell a deliberate 503 with Retry-After from a broken gateway; this records what the client saw.
Lines are short single writes to a file opened with O_APPEND, so the workers' lines never interleave.
"""

import os

_PATH = os.environ.get("LLMCTL_LOAD_TAP")

if _PATH:
    import json
    import time

    import httpx

    _init = httpx.AsyncClient.__init__

    async def _record(response: httpx.Response) -> None:
        line = json.dumps({"t": time.time(), "status": response.status_code,
                           "retry_after": response.headers.get("retry-after"),
                           "path": response.request.url.path})
        fd = os.open(_PATH, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)

    def _init_with_tap(self, *args, **kwargs):
        hooks = dict(kwargs.pop("event_hooks", None) or {})
        hooks["response"] = [*hooks.get("response", []), _record]
        _init(self, *args, event_hooks=hooks, **kwargs)

    httpx.AsyncClient.__init__ = _init_with_tap
