"""What a request costs: its share of the GPU-hours of the replica that served it.

cost = (wall seconds / 3600) x hourly price of the replica's GPU / max(1, requests in flight on that
replica when this one was sent). Requests batched together split the GPU's time, so a replica kept busy
by many tenants bills each a fraction. The default prices are rough on-demand cloud rates per GPU, meant
to be replaced by the operator's own (a JSON object {"H100": 2.5, ...} in a file, or a dict).

GPU names are matched loosely, since NVML reports names like "NVIDIA H100 80GB HBM3" or
"NVIDIA GeForce RTX 4090": case, spaces and dashes are ignored and the longest table name contained in
the reported name wins. A GPU the table does not know, or no GPU at all, is priced as "cpu".
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from pathlib import Path

from llmctl.controlplane.errors import InvalidArgument

logger = logging.getLogger("llmctl.gateway")

DEFAULT_GPU_PRICES: dict[str, float] = {
    "H200": 3.50,
    "H100": 2.50,
    "A100": 1.50,
    "L40S": 1.00,
    "A10G": 0.75,
    "RTX 4090": 0.40,
    "cpu": 0.05,
}
"""US dollars per GPU-hour; "cpu" is the price of a replica without a GPU (or with an unknown one)."""


def _normalize(name: str) -> str:
    return re.sub(r"[\s_-]+", "", name).upper()


class PriceTable:
    """Hourly price per GPU model, with the defaults under any overrides."""

    def __init__(self, prices: Mapping[str, float] | None = None) -> None:
        merged = dict(DEFAULT_GPU_PRICES)
        for name, price in (prices or {}).items():
            if not isinstance(name, str) or not name.strip():
                raise InvalidArgument(f"GPU price table: names must be non-empty strings, got {name!r}")
            if isinstance(price, bool) or not isinstance(price, int | float) or not math.isfinite(price) \
                    or price < 0:
                raise InvalidArgument(
                    f"GPU price table: the price of '{name}' must be a non-negative number of dollars per "
                    f"hour, got {price!r}"
                )
            merged[name] = float(price)
        self.prices = merged
        # Longest first, so "A100" is tried before a shorter name it contains.
        self._keys = sorted(((_normalize(k), k) for k in merged if k != "cpu"), key=lambda kv: -len(kv[0]))
        self._warned: set[str] = set()

    @classmethod
    def from_file(cls, path: str | Path) -> PriceTable:
        """Load overrides from a JSON object mapping GPU names to dollars per hour."""
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise InvalidArgument(f"GPU price file {path} does not exist") from None
        except json.JSONDecodeError as exc:
            raise InvalidArgument(f"GPU price file {path} is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise InvalidArgument(f"GPU price file {path} must hold a JSON object like {{\"H100\": 2.5}}")
        return cls(data)

    def hourly(self, gpu: str | None) -> float:
        """Dollars per hour for the named GPU; "cpu" for None or a name the table lacks."""
        if gpu:
            wanted = _normalize(gpu)
            for key, name in self._keys:
                if key in wanted:
                    return self.prices[name]
            if gpu not in self._warned:
                self._warned.add(gpu)
                logger.warning("no price for GPU %r; billing it at the 'cpu' rate", gpu)
        return self.prices["cpu"]

    def request_cost(self, *, wall_s: float, gpu: str | None, concurrent: int) -> float:
        """The request's share of its replica's GPU time, in dollars."""
        return max(0.0, wall_s) / 3600.0 * self.hourly(gpu) / max(1, concurrent)
