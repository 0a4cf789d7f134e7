"""Calibration text -> token windows -> what each decoder linear sees (for AWQ), via forward hooks.

The forward is the engine's own (one prefill per batch of windows through a scratch KV pool).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from llmctl.agent.engine.errors import InvalidRequest
from llmctl.agent.engine.models.llama import LINEAR_NAMES

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
DEFAULT_CALIBRATION = DATA_DIR / "calibration.txt"
DEFAULT_SAMPLES = 16
DEFAULT_SEQ_LEN = 256


def read_text(path: str | Path) -> str:
    """A .txt file's text, or the "text" fields of a .jsonl file, joined. Clear errors when unusable."""
    path = Path(path)
    if not path.is_file():
        raise InvalidRequest(f"calibration file {path} does not exist")
    raw = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        texts = []
        for n, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                texts.append(json.loads(line)["text"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise InvalidRequest(f"{path}:{n} must be a JSON object with a \"text\" field") from exc
        raw = "\n\n".join(texts)
    if not raw.strip():
        raise InvalidRequest(f"calibration file {path} is empty")
    return raw


def token_windows(tokenizer, text: str, samples: int, seq_len: int) -> list[list[int]]:
    """Up to `samples` consecutive windows of `seq_len` tokens (fewer when the text is short)."""
    if samples < 1 or seq_len < 2:
        raise InvalidRequest("calibration needs samples >= 1 and a sequence length >= 2")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) < 2:
        raise InvalidRequest("calibration text has fewer than 2 tokens")
    windows = [ids[i:i + seq_len] for i in range(0, len(ids), seq_len)][:samples]
    return [w for w in windows if len(w) >= 2]


@dataclass
class LayerActivations:
    mean_abs: dict[str, torch.Tensor] = field(default_factory=dict)
    """Per linear: mean |x| per input channel over every calibration token [in]."""
    rows: dict[str, torch.Tensor] = field(default_factory=dict)
    """Per linear: sampled input rows [N, in], the same token positions for every linear."""


@dataclass
class ActivationStats:
    layers: list[LayerActivations | None]
    num_tokens: int


@torch.no_grad()
def run_windows(model, windows: list[list[int]], block_size: int, device: str, batch_tokens: int = 2048,
                before_batch=None) -> None:
    """Forward every window (prefill from position 0), a few windows per batch. The layers run op by op
    (a finalized model's decoder_plan is set aside meanwhile): callers watch the linears with forward hooks,
    which the fused decoder layers would not call."""
    from llmctl.agent.engine.model_runner import score_tokens

    plan = getattr(model, "decoder_plan", None)
    model.decoder_plan = None
    try:
        batch, size, offset = [], 0, 0
        for w in windows + [None]:
            if w is None or (batch and size + len(w) > batch_tokens):
                if before_batch is not None:
                    before_batch(offset, size)
                score_tokens(model, batch, block_size, None, device, every_position=False)
                offset += size
                batch, size = [], 0
            if w is not None:
                batch.append(w)
                size += len(w)
    finally:
        model.decoder_plan = plan


@torch.no_grad()
def collect_activations(
    model, windows: list[list[int]], *, block_size: int = 16, device: str = "cpu", max_rows: int = 2048,
    seed: int = 0,
) -> ActivationStats:
    total = sum(len(w) for w in windows)
    generator = torch.Generator().manual_seed(seed)
    picked = torch.zeros(total, dtype=torch.bool)
    picked[torch.randperm(total, generator=generator)[:max_rows]] = True
    current: dict[str, torch.Tensor] = {}
    sums = [{name: None for name in LINEAR_NAMES} for _ in model.layers]
    rows: list[dict[str, list[torch.Tensor]]] = [{name: [] for name in LINEAR_NAMES} for _ in model.layers]

    def hook(i: int, name: str):
        def record(module, args, output):
            x = args[0].float()  # [T, in]
            total_abs = x.abs().sum(0, dtype=torch.float64)
            sums[i][name] = total_abs if sums[i][name] is None else sums[i][name] + total_abs
            rows[i][name].append(x[current["rows"]].cpu())
        return record

    handles = []
    for i, layer in enumerate(model.layers):
        for name in LINEAR_NAMES:
            owner, attr = name.split(".")
            handles.append(getattr(getattr(layer, owner), attr).register_forward_hook(hook(i, name)))

    def before_batch(offset: int, size: int) -> None:
        current["rows"] = picked[offset:offset + size].nonzero().squeeze(1).to(device)

    try:
        run_windows(model, windows, block_size, device, before_batch=before_batch)
    finally:
        for h in handles:
            h.remove()
    layers = [
        LayerActivations(
            mean_abs={n: (sums[i][n] / total).float().cpu() for n in LINEAR_NAMES},
            rows={n: torch.cat(rows[i][n]) for n in LINEAR_NAMES},
        )
        for i in range(len(model.layers))
    ]
    return ActivationStats(layers=layers, num_tokens=total)
