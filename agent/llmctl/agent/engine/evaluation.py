"""Quality metrics for a candidate engine configuration against a reference one, on the same text.

- perplexity on a corpus (non-overlapping windows of `context_len` tokens; each window's first token
  is context only);
- KL(reference || candidate) of the next-token distributions and top-1 agreement, per predicted token;
- accuracy on multiple-choice items scored by log-likelihood: each choice is appended to
  "Question: ...\\nAnswer:" and the choice with the highest mean log-probability per token wins.

Both engines score through their own weights and KV cache format (LLMEngine.score), so the numbers
measure what serving would compute. Used by `llmctl eval`, the optimizer and quality sampling.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from llmctl.agent.engine.errors import InvalidRequest

DATA_DIR = Path(__file__).resolve().parent / "data"
DEFAULT_CORPUS = DATA_DIR / "eval_corpus.txt"
DEFAULT_MC = DATA_DIR / "mc_items.jsonl"
MC_CATEGORIES = ("general_knowledge", "arithmetic", "reading_comprehension")


@dataclass(frozen=True)
class MCItem:
    id: str
    category: str
    question: str
    choices: tuple[str, ...]
    answer: int


@dataclass(frozen=True)
class EvalOptions:
    corpus: Path = DEFAULT_CORPUS
    mc: Path | None = DEFAULT_MC
    """None: skip the multiple-choice set."""
    context_len: int = 512
    max_tokens: int | None = None
    """Score at most this many corpus tokens (None: the whole corpus)."""
    mc_limit: int | None = None
    mc_batch: int = 8
    """Items scored per forward (x their choices)."""


@dataclass
class EvalResult:
    linear_weight_bytes: int
    kv_bytes_per_token: int
    perplexity: float
    kl_divergence: float
    top1_agreement: float
    accuracy: float | None
    accuracy_by_category: dict[str, float] = field(default_factory=dict)
    item_correct: list[int] = field(default_factory=list)
    """1 or 0 per multiple-choice item, in the set's order: the optimizer's judge pairs the candidate's items
    with the reference's to tell a real accuracy loss from a few flipped items."""
    num_tokens: int = 0
    num_items: int = 0
    quantization: str | None = None
    kv_cache_dtype: str = ""
    linear_bytes_vs_fp16: float = 0.0
    """linear_weight_bytes / (2 bytes x the linears' weight count)."""

    def to_dict(self) -> dict:
        return asdict(self)


def load_mc_items(path: str | Path) -> list[MCItem]:
    """JSONL of {"id", "category", "question", "choices": [...], "answer": index}; clear errors per line."""
    path = Path(path)
    if not path.is_file():
        raise InvalidRequest(f"multiple-choice file {path} does not exist")
    items, seen = [], set()
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            item = MCItem(
                id=str(raw["id"]), category=str(raw.get("category", "custom")), question=str(raw["question"]),
                choices=tuple(str(c) for c in raw["choices"]), answer=int(raw["answer"]),
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise InvalidRequest(
                f"{path}:{n}: expected {{\"id\", \"question\", \"choices\": [...], \"answer\": index}}: {exc}"
            ) from exc
        if len(item.choices) < 2 or not 0 <= item.answer < len(item.choices):
            raise InvalidRequest(f"{path}:{n}: needs >= 2 choices and an answer index among them")
        if item.id in seen:
            raise InvalidRequest(f"{path}:{n}: duplicate id {item.id!r}")
        seen.add(item.id)
        items.append(item)
    if not items:
        raise InvalidRequest(f"multiple-choice file {path} has no items")
    return items


def corpus_windows(tokenizer, text: str, context_len: int, max_tokens: int | None) -> list[list[int]]:
    if context_len < 2:
        raise InvalidRequest("context length must be >= 2")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if max_tokens is not None:
        ids = ids[:max_tokens]
    windows = [ids[i:i + context_len] for i in range(0, len(ids), context_len)]
    windows = [w for w in windows if len(w) >= 2]
    if not windows:
        raise InvalidRequest("the corpus has fewer than 2 tokens")
    return windows


class _Side:
    """Running sums for one engine."""

    def __init__(self, engine):
        self.engine = engine
        self.nll = 0.0
        self.kl = 0.0
        self.agree = 0
        self.correct: dict[str, list[int]] = {}
        self.verdicts: list[int] = []


def evaluate(candidate, reference, options: EvalOptions = EvalOptions(), progress=None) -> dict[str, EvalResult]:
    """{"candidate": EvalResult, "reference": EvalResult}; the reference's KL is 0 and agreement 1.

    progress(done, total, what) is called as windows and items are scored.
    """
    from llmctl.agent.engine.quantization.calibration import read_text

    tokenizer = reference.tokenizer
    if candidate.info.vocab_size != reference.info.vocab_size:
        raise InvalidRequest("candidate and reference must share a vocabulary")
    windows = corpus_windows(tokenizer, read_text(options.corpus), options.context_len, options.max_tokens)
    items = [] if options.mc is None else load_mc_items(options.mc)[: options.mc_limit]
    total = len(windows) + len(items)
    cand, ref = _Side(candidate), _Side(reference)
    n = 0
    with torch.inference_mode():
        for i, w in enumerate(windows):
            targets = torch.tensor(w[1:])
            lr = torch.log_softmax(reference.score([w])[0][:-1], dim=-1)
            lc = torch.log_softmax(candidate.score([w])[0][:-1], dim=-1)
            ref.nll -= lr.gather(1, targets[:, None]).sum().item()
            cand.nll -= lc.gather(1, targets[:, None]).sum().item()
            cand.kl += (lr.exp() * (lr - lc)).sum().item()
            cand.agree += int((lc.argmax(-1) == lr.argmax(-1)).sum())
            n += len(targets)
            if progress:
                progress(i + 1, total, "corpus")
        for start in range(0, len(items), options.mc_batch):
            batch = items[start:start + options.mc_batch]
            for side in (ref, cand):
                for item, ok in zip(batch, _score_items(side.engine, tokenizer, batch), strict=True):
                    side.correct.setdefault(item.category, []).append(int(ok))
                    side.verdicts.append(int(ok))
            if progress:
                progress(len(windows) + start + len(batch), total, "multiple choice")
    ref.agree = n
    return {
        "candidate": _result(cand, n, len(items)),
        "reference": _result(ref, n, len(items)),
    }


def _score_items(engine, tokenizer, items: list[MCItem]) -> list[bool]:
    """Whether the engine's most likely choice (mean log-prob per choice token) is the answer."""
    seqs, spans = [], []
    for item in items:
        prompt = tokenizer(f"Question: {item.question}\nAnswer:", add_special_tokens=False)["input_ids"]
        for choice in item.choices:
            ans = tokenizer(f" {choice}", add_special_tokens=False)["input_ids"]
            seqs.append(prompt + ans)
            spans.append((len(prompt), len(ans)))
    scores = []
    for tokens, logits, (p, a) in zip(seqs, engine.score(seqs), spans, strict=True):
        logp = torch.log_softmax(logits[p - 1:p - 1 + a], dim=-1)
        scores.append(logp.gather(1, torch.tensor(tokens[p:p + a])[:, None]).mean().item())
    verdicts, k = [], 0
    for item in items:
        s = scores[k:k + len(item.choices)]
        k += len(item.choices)
        verdicts.append(max(range(len(s)), key=s.__getitem__) == item.answer)
    return verdicts


def _result(side: _Side, n: int, num_items: int) -> EvalResult:
    info = side.engine.info
    flat = [v for vs in side.correct.values() for v in vs]
    return EvalResult(
        linear_weight_bytes=info.linear_weight_bytes,
        kv_bytes_per_token=info.kv_bytes_per_token,
        perplexity=math.exp(side.nll / n),
        kl_divergence=side.kl / n,
        top1_agreement=side.agree / n,
        accuracy=(sum(flat) / len(flat)) if flat else None,
        accuracy_by_category={c: sum(v) / len(v) for c, v in sorted(side.correct.items())},
        item_correct=list(side.verdicts),
        num_tokens=n,
        num_items=num_items,
        quantization=info.quantization,
        kv_cache_dtype=info.kv_cache_dtype,
        linear_bytes_vs_fp16=info.linear_weight_bytes / (2 * info.linear_params) if info.linear_params else 0.0,
    )
