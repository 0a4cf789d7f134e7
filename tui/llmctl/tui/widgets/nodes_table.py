"""The Fleet screen's nodes: one row per GPU (nvitop's habit), the node's name, health and replicas on its
first GPU's row. A host without NVML gets one row with N/A for every GPU reading."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.text import Text

from llmctl.controlplane.proto import llmctl_pb2 as pb
from llmctl.tui.format import na, power, short_gpu_name, state_text, temperature
from llmctl.tui.widgets.gpu_bar import memory_bar, utilization_bar
from llmctl.tui.widgets.keyed_table import Cell, Column, KeyedTable


def _reading(gpu: pb.GpuSample, name: str) -> Any:
    return getattr(gpu, name) if gpu.HasField(name) else None


def node_of(row_key: str) -> str:
    return row_key.split("/", 1)[0]


def node_rows(nodes: Iterable[pb.Node]) -> dict[str, tuple[Cell, ...]]:
    rows: dict[str, tuple[Cell, ...]] = {}
    for node in sorted(nodes, key=lambda n: n.name):
        health = state_text(node.state)
        replicas = f"{node.replica_count}/{node.max_replicas}"
        if not node.gpus:
            what = "host only" if node.source == pb.TELEMETRY_SOURCE_HOST else "no GPU reported"
            rows[f"{node.name}/-"] = (node.name, Text(what, style="dim"), na(), na(), na(), na(), health,
                                      replicas)
            continue
        for i, gpu in enumerate(node.gpus):
            first = i == 0
            rows[f"{node.name}/{gpu.index}"] = (
                node.name if first else "",
                f"{gpu.index} {short_gpu_name(gpu.name)}",
                utilization_bar(_reading(gpu, "utilization_percent")),
                memory_bar(_reading(gpu, "memory_used_bytes"), _reading(gpu, "memory_total_bytes"), 8),
                temperature(_reading(gpu, "temperature_c")),
                power(_reading(gpu, "power_watts"), _reading(gpu, "power_limit_watts")),
                health if first else "",
                replicas if first else "",
            )
    return rows


class NodesTable(KeyedTable):
    COLUMNS = (
        Column("node", "NODE", 14),
        Column("gpu", "GPU", 20),
        Column("util", "UTIL", 15),
        Column("memory", "MEMORY", 19),
        Column("temp", "TEMP", 5),
        Column("power", "POWER", 8),
        Column("health", "HEALTH", 9),
        Column("replicas", "REPLICAS", 8),
    )

    def show(self, nodes: Iterable[pb.Node]) -> int:
        changed = self.set_rows(node_rows(nodes))
        self.set_title(f"Nodes ({len({node_of(k) for k in self._all})})")
        return changed

    @property
    def cursor_node(self) -> str | None:
        key = self.cursor_key
        return None if key is None else node_of(key)
