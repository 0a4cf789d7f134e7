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

A chat prompt also carries its system messages (ChatPrompt) so that the worker thread can hash them: the
audit (`llmctl prompts audit`) counts requests per system prompt by that hash, and estimates the system
prompt's tokens in the same proportion (the gateway has no tokenizer).

Only hashes are kept, never text (8-byte chunk keys here; the traffic rows get keyed hashes, see
services/traffic.py). Cost is O(prompt) hashing per request, done in the worker thread
that writes the usage row, never on the event loop. Memory: at most max_keys keys per deployment and
max_deployments deployments (the least recently seen is forgotten first).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Any, NamedTuple

from llmctl.controlplane.gateway.routing import prompt_text

CHUNK_CHARS = 64
"""About 16 tokens of English text: one KV block of the engine's default size."""
CHUNK_IDS = 16
MAX_KEYS = 100_000
MAX_DEPLOYMENTS = 256

SYSTEM_ROLES = frozenset({"system", "developer"})
"""Roles whose messages make a chat's system prompt ("developer" is OpenAI's newer name for it)."""

Prompt = str | tuple[int, ...]
"""The rendered prompt text, or the prompt's token ids."""


class ChatPrompt(str):
    """A chat's rendered prompt (routing.prompt_text) that also holds its system messages, rendered the same way
    (`system`, "" without any); a str, so the tracker chunks it like any text. Neither is ever stored."""

    system: str

    def __new__(cls, text: str, system: str) -> ChatPrompt:
        self = super().__new__(cls, text)
        self.system = system
        return self


class SharedPrefix(NamedTuple):
    """How much of a prompt repeats an earlier one: tokens, and the key of its last shared chunk (None: none)."""

    tokens: int
    key: bytes | None


class SystemPrompt(NamedTuple):
    """A prompt's system part: a 16-byte digest of its text (None: the prompt has none) and its tokens."""

    digest: bytes | None
    tokens: int


def prompt_of(kind: str, body: dict[str, Any]) -> Prompt:
    """What the tracker chunks: a completion's token ids when it was sent as ids, else the rendered text (a
    ChatPrompt for a chat)."""
    prompt = body.get("prompt") if kind == "completion" else None
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], list):
        prompt = prompt[0]
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return tuple(prompt)
    if kind != "chat":
        return prompt_text(kind, body)
    messages = body.get("messages")
    # The body is the client's, unchecked here: a role may be any JSON value (a dict is not hashable).
    system = [m for m in messages if isinstance(m, dict) and isinstance(m.get("role"), str)
              and m["role"] in SYSTEM_ROLES] \
        if isinstance(messages, list) else []
    return ChatPrompt(prompt_text(kind, body), prompt_text(kind, {"messages": system}) if system else "")


def system_prompt(prompt: Prompt, prompt_tokens: int) -> SystemPrompt:
    """The prompt's system messages as a digest and a token count, in proportion to their share of the rendered
    prompt (prompt_tokens x system characters / all characters), like shared_tokens()."""
    system = prompt.system if isinstance(prompt, ChatPrompt) else ""
    if not system:
        return SystemPrompt(None, 0)
    digest = hashlib.blake2b(system.encode("utf-8", "surrogatepass"), digest_size=16).digest()
    return SystemPrompt(digest, min(prompt_tokens, round(max(0, prompt_tokens) * len(system) / len(prompt))))


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
        return self.observe_keys(deployment, prompt)[0]

    def observe_keys(self, deployment: str, prompt: Prompt) -> tuple[int, bytes | None]:
        """observe(), and the key of the last leading chunk already known (it stands for the whole shared
        prefix; None when none was)."""
        keys, key = [], deployment.encode()
        for chunk in _chunks(prompt):  # hashed before taking the lock: other writers wait only for the LRU
            key = hashlib.blake2b(key + chunk, digest_size=8).digest()
            keys.append(key)
        if not keys:
            return 0, None
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
        shared = len(keys) if shared is None else shared
        return shared, keys[shared - 1] if shared else None

    def shared_prefix(self, deployment: str, prompt: Prompt, prompt_tokens: int) -> SharedPrefix:
        """observe_keys(), converted to tokens of this prompt (no key when that is no token)."""
        chunks, key = self.observe_keys(deployment, prompt)
        tokens = shared_tokens(prompt_tokens, prompt, chunks)
        return SharedPrefix(tokens, key if tokens else None)

    def known(self, deployment: str) -> int:
        """How many chunk keys the deployment holds now."""
        with self._lock:
            return len(self._seen.get(deployment, ()))
