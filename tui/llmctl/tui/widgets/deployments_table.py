"""The Fleet screen's deployments: the current revision's quality judgement, live stats and sparklines of
tokens/s and queue depth over the last minutes, one row per deployment keyed by its name."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping

from llmctl.controlplane.proto import llmctl_pb2 as pb
from llmctl.tui.format import milliseconds, na, number, percent, quality_badge, tail
from llmctl.tui.history import History
from llmctl.tui.widgets.keyed_table import Cell, Column, KeyedTable
from llmctl.tui.widgets.sparkline import sparkline

TREND_BUCKETS = 12
TREND_BUCKET_S = 15.0
"""12 buckets of 15 s: the sparklines span the last three minutes."""
MODEL_WIDTH = 13
"""Every column fits 120 terminal columns, a vertical scrollbar included; a longer model shows its end."""


def _stat(stats: pb.DeploymentStats, name: str) -> float | None:
    return getattr(stats, name) if stats.HasField(name) else None


def deployment_rows(deployments: Iterable[pb.Deployment],
                    histories: Mapping[str, History]) -> dict[str, tuple[Cell, ...]]:
    rows: dict[str, tuple[Cell, ...]] = {}
    for d in sorted(deployments, key=lambda d: d.name):
        history = histories.get(d.name) or History()
        ready = f"{d.ready_replicas}/{d.desired_replicas}"
        tokens = history.buckets("tokens_per_s", TREND_BUCKETS, TREND_BUCKET_S, statistics.fmean)
        queue = history.buckets("queue_depth", TREND_BUCKETS, TREND_BUCKET_S, max)
        rows[d.name] = (
            d.name,
            tail(d.model, MODEL_WIDTH),
            str(d.revision),
            quality_badge(d.quality_state, d.quality.sample_rate > 0),
            f"{d.weight_quantization or 'none'}/{d.kv_cache_dtype or 'auto'}",
            ready,
            number(_stat(d.stats, "requests_per_s")),
            milliseconds(_stat(d.stats, "ttft_p95_s")),
            number(_stat(d.stats, "tokens_per_s"), 0),
            percent(_stat(d.stats, "kv_cache_usage")),
            sparkline(tokens, "cyan") if any(v is not None for v in tokens) else na(),
            sparkline(queue, "magenta") if any(v is not None for v in queue) else na(),
        )
    return rows


class DeploymentsTable(KeyedTable):
    COLUMNS = (
        Column("name", "NAME", 10),
        Column("model", "MODEL", MODEL_WIDTH),
        Column("revision", "REV", 3),
        Column("quality", "QUALITY", 8),
        Column("quant", "W/KV", 9),
        Column("ready", "READY", 5),
        Column("rps", "REQ/S", 5),
        Column("ttft", "TTFT95", 6),
        Column("tps", "TOK/S", 5),
        Column("kv", "KV", 4),
        Column("tps_trend", "TOK/S 3m", TREND_BUCKETS),
        Column("queue_trend", "QUEUE 3m", TREND_BUCKETS),
    )

    def show(self, deployments: Iterable[pb.Deployment], histories: Mapping[str, History]) -> int:
        changed = self.set_rows(deployment_rows(deployments, histories))
        self.set_title(f"Deployments ({len(self._all)})")
        return changed
