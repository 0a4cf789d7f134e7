"""A deployment's replicas, where they run and what for: `serve` replicas take traffic; the `score` one
runs the quality reference revision, is never routed, and scores sampled answers."""

from __future__ import annotations

from rich.text import Text

from llmctl.controlplane.proto import llmctl_pb2 as pb
from llmctl.tui.format import head, state_text
from llmctl.tui.widgets.keyed_table import Cell, Column, KeyedTable


def replica_state(replica: pb.Replica) -> str:
    return pb.ReplicaState.Name(replica.state).removeprefix("REPLICA_STATE_")


def replica_role(replica: pb.Replica) -> Text:
    role = replica.role or "serve"  # a control plane from before quality sampling sends no role
    return Text(role, style={"score": "cyan", "trial": "magenta"}.get(role, ""))


class ReplicasTable(KeyedTable):
    COLUMNS = (
        Column("id", "ID", 6),
        Column("node", "NODE", 14),
        Column("revision", "REV", 3),
        Column("role", "ROLE", 5),
        Column("state", "STATE", 8),
        Column("url", "URL", 26),
        Column("restarts", "RESTARTS", 8),
        Column("error", "ERROR"),
    )

    def show(self, deployment: pb.Deployment | None) -> None:
        rows: dict[str, tuple[Cell, ...]] = {}
        for r in deployment.replicas if deployment is not None else []:
            rows[str(r.id)] = (str(r.id), r.node or "-", str(r.revision), replica_role(r),
                               state_text(replica_state(r)), r.url or "-", str(r.restarts),
                               head(" ".join(r.error.split()), 200))
        self.set_rows(rows)
        self.set_title(f"Replicas ({len(rows)})")
