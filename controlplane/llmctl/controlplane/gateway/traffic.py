"""How much of each prompt repeats the start of an earlier one, per deployment, without keeping any prompt.

The approximation: a prompt is cut into fixed-size chunks, CHUNK_CHARS characters of its rendered text
(routing.prompt_text) or CHUNK_IDS token ids when the client sent token ids. Chunk i's key is a hash of the
chunk chained with chunk i-1's key, so one key stands for the whole prompt up to the end of its chunk. A
prompt's shared prefix is its run of leading chunks whose keys the deployment has seen before; every key
is then remembered in a bounded LRU (max_keys per deployment), so "before" means "recently enough to still
be remembered", much like a replica's prefix cache. Only whole chunks count: a trailing partial chunk, or
a shared start shorter than one chunk, counts as not shared (a prefix cache also reuses whole blocks only).
Text is converted to tokens in proportion (prompt_tokens x shared characters / all characters); for token
ids the count is exact to the chunk.

Only 8-byte hashes are kept, never text. Cost is O(prompt) hashing per request, done in the worker thread
that writes the usage row, never on the event loop. Memory: at most max_keys keys per deployment and
max_deployments deployments (the least recently seen is forgotten first).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Any

from llmctl.controlplane.gateway.routing import prompt_text

CHUNK_CHARS = 64
"""About 16 tokens of English text: one KV block of the engine's default size."""
CHUNK_IDS = 16
MAX_KEYS = 100_000
MAX_DEPLOYMENTS = 256

Prompt = str | tuple[int, ...]
"""The rendered prompt text, or the prompt's token ids."""


def prompt_of(kind: str, body: dict[str, Any]) -> Prompt:
    """What the tracker chunks: a completion's token ids when it was sent as ids, else the rendered text."""
    prompt = body.get("prompt") if kind == "completion" else None
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], list):
        prompt = prompt[0]
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return tuple(prompt)
    return prompt_text(kind, body)


def _chunks(prompt: Prompt) -> list[bytes]:
    """The prompt's whole chunks as bytes (a trailing partial chunk is left out)."""
    if isinstance(prompt, str):
        step = CHUNK_CHARS
        return [prompt[i:i + step].encode("utf-8", "surrogatepass") for i in range(0, len(prompt) - step + 1, step)]
    step = CHUNK_IDS
    return [",".join(map(str, prompt[i:i + step])).encode() for i in range(0, len(prompt) - step + 1, step)]


def shared_tokens(prompt_tokens: int, prompt: Prompt, shared_chunks: int) -> int:
    """Tokens of the prompt covered by its shared chunks, in proportion to the prompt's length."""
    if not prompt or shared_chunks <= 0 or prompt_tokens <= 0:
        return 0
    step = CHUNK_CHARS if isinstance(prompt, str) else CHUNK_IDS
    return min(prompt_tokens, round(prompt_tokens * shared_chunks * step / len(prompt)))


class PrefixTracker:
    """Recent chunk keys per deployment; observe() says how many leading chunks of a prompt were seen."""

    def __init__(self, *, max_keys: int = MAX_KEYS, max_deployments: int = MAX_DEPLOYMENTS) -> None:
        if max_keys < 1 or max_deployments < 1:
            raise ValueError(f"max_keys and max_deployments must be >= 1, got {max_keys}, {max_deployments}")
        self.max_keys, self.max_deployments = max_keys, max_deployments
        self._seen: OrderedDict[str, OrderedDict[bytes, None]] = OrderedDict()
        self._lock = threading.Lock()

    def observe(self, deployment: str, prompt: Prompt) -> int:
        """Remember the prompt's chunk keys; returns how many of its leading chunks were already known."""
        keys, key = [], deployment.encode()
        for chunk in _chunks(prompt):  # hashed before taking the lock: other writers wait only for the LRU
            key = hashlib.blake2b(key + chunk, digest_size=8).digest()
            keys.append(key)
        if not keys:
            return 0
        with self._lock:
            seen = self._seen.get(deployment)
            if seen is None:
                seen = self._seen[deployment] = OrderedDict()
                while len(self._seen) > self.max_deployments:
                    self._seen.popitem(last=False)
            self._seen.move_to_end(deployment)
            shared = None
            for i, key in enumerate(keys):
                if key in seen:
                    seen.move_to_end(key)
                else:
                    shared = i if shared is None else shared
                    seen[key] = None
            while len(seen) > self.max_keys:
                seen.popitem(last=False)
        return len(keys) if shared is None else shared

    def shared_prefix_tokens(self, deployment: str, prompt: Prompt, prompt_tokens: int) -> int:
        """observe(), converted to tokens of this prompt."""
        return shared_tokens(prompt_tokens, prompt, self.observe(deployment, prompt))

    def known(self, deployment: str) -> int:
        """How many chunk keys the deployment holds now."""
        with self._lock:
            return len(self._seen.get(deployment, ()))
