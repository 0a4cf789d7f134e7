"""The routing classifier: is a prompt simple enough for the companion deployment?

Logistic regression over hashed features: lowercased words, word bigrams, and the prompt's length in words
(log-spaced buckets). It learns from the labelled set in route_prompts.py when first used (a few hundred
prompts: well under a second with numpy), so there are no weights to ship or to drift from the data. One
prediction hashes a few dozen features and sums their weights: microseconds on the request path.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from llmctl.controlplane.gateway.routing import stable_hash

DIMENSIONS = 1 << 12
_WORD = re.compile(r"[a-z0-9']+")


def features(text: str) -> list[int]:
    """Hashed feature indices of a prompt (a repeated word counts once)."""
    words = _WORD.findall(text.lower())
    names = {f"w:{w}" for w in words} | {f"b:{a} {b}" for a, b in zip(words, words[1:], strict=False)}
    names.add(f"len:{min(8, int(math.log2(len(words) + 1)))}")
    return sorted({stable_hash(name) % DIMENSIONS for name in names})


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 400
    learning_rate: float = 0.5
    l2: float = 1e-4


class RouteClassifier:
    """P(simple | prompt) from a weight vector over hashed features."""

    def __init__(self, weights: np.ndarray, bias: float, threshold: float = 0.5) -> None:
        self.weights, self.bias, self.threshold = weights, bias, threshold

    @classmethod
    def train(cls, texts: Sequence[str], simple: Sequence[bool], config: TrainConfig = TrainConfig()
              ) -> RouteClassifier:
        """Full-batch gradient descent on the logistic loss; deterministic (zero start, no sampling)."""
        x = np.zeros((len(texts), DIMENSIONS), dtype=np.float64)  # [examples, features]
        for row, text in enumerate(texts):
            x[row, features(text)] = 1.0
        y = np.asarray(simple, dtype=np.float64)
        w, b = np.zeros(DIMENSIONS), 0.0
        for _ in range(config.epochs):
            p = 1.0 / (1.0 + np.exp(-(x @ w + b)))
            error = p - y
            w -= config.learning_rate * (x.T @ error / len(y) + config.l2 * w)
            b -= config.learning_rate * float(error.mean())
        return cls(w, b)

    def probability(self, text: str) -> float:
        z = float(self.weights[features(text)].sum()) + self.bias
        return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z))))

    def is_simple(self, text: str) -> bool:
        return self.probability(text) >= self.threshold


def labelled() -> tuple[list[str], list[bool]]:
    """The project's labelled set: (prompts, simple?)."""
    from llmctl.controlplane.gateway.route_prompts import COMPLEX, SIMPLE

    return [*SIMPLE, *COMPLEX], [True] * len(SIMPLE) + [False] * len(COMPLEX)


def split(texts: list[str], labels: list[bool], every: int = 5) -> tuple[tuple[list[str], list[bool]],
                                                                          tuple[list[str], list[bool]]]:
    """(train, held out): every `every`-th example is held out."""
    train = ([t for i, t in enumerate(texts) if i % every], [y for i, y in enumerate(labels) if i % every])
    held = ([t for i, t in enumerate(texts) if not i % every], [y for i, y in enumerate(labels) if not i % every])
    return train, held


def accuracy(model: RouteClassifier, texts: Sequence[str], labels: Sequence[bool]) -> float:
    return sum(model.is_simple(t) == y for t, y in zip(texts, labels, strict=True)) / len(texts)


@functools.cache
def default_classifier() -> RouteClassifier:
    """The classifier the `classifier` rule uses: trained once per process on the whole labelled set."""
    return RouteClassifier.train(*labelled())
