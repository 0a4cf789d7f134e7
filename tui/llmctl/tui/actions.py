"""What the operator can change, as flows: ask (a dialog) -> confirm -> send -> show the answer.

Each runs in a worker of the App (one at a time), sends nothing before the operator confirms, and ends
with one line saying what the control plane did or the error it gave. The control plane is called on a
thread (gRPC blocks), so the screen keeps drawing meanwhile.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from textual import work

from llmctl.controlplane.client import AdminClient
from llmctl.controlplane.commands.render import config_changes, value_text
from llmctl.controlplane.errors import ControlPlaneError
from llmctl.controlplane.proto import llmctl_pb2 as pb
from llmctl.tui.dialogs.confirm import ConfirmDialog
from llmctl.tui.dialogs.deploy_form import DeployForm
from llmctl.tui.dialogs.rollback import RollbackDialog
from llmctl.tui.dialogs.scale import ScaleDialog
from llmctl.tui.widgets.config_diff import revision_changes

if TYPE_CHECKING:
    from llmctl.tui.app import DashboardApp

T = TypeVar("T")
MAX_DIFF_LINES = 12


def _change_lines(changes: list[dict[str, Any]]) -> list[str]:
    lines = [f"  {c['key']}: {value_text(c['from'])} → {value_text(c['to'])}" for c in changes[:MAX_DIFF_LINES]]
    if len(changes) > MAX_DIFF_LINES:
        lines.append(f"  … and {len(changes) - MAX_DIFF_LINES} more")
    return lines


class ActionsMixin:
    """The App's action flows (mixed into DashboardApp)."""

    async def admin(self: DashboardApp, request: Callable[[AdminClient], T]) -> T:
        """One AdminService request on a worker thread; raises the control plane's error."""
        return await asyncio.to_thread(self.feed.call, request)

    def _cancelled(self: DashboardApp, what: str) -> None:
        self.report(True, f"{what}: cancelled, nothing was sent")

    @work(group="action", exclusive=True)
    async def deploy(self: DashboardApp, base: pb.Deployment | None = None) -> None:
        spec = await self.push_screen_wait(DeployForm(base))
        if spec is None:
            return self._cancelled("deploy")
        current = self.store.deployments.get(spec.name)
        details = [f"model {spec.model}",
                   f"replicas {spec.replicas if spec.replicas is not None else 'unchanged'}"]
        if current is not None:
            before = {**json.loads(current.engine_config_json or "{}"), "model": current.model}
            changes = config_changes(before, {**spec.engine_config, "model": spec.model})
            details += ["changes from the current revision:", *_change_lines(changes)] if changes else \
                ["same model and engine config as the current revision (no new revision)"]
        else:
            details.append("a new deployment")
        if not await self.push_screen_wait(ConfirmDialog(f"Deploy {spec.name}?", details)):
            return self._cancelled(f"deploy {spec.name}")
        try:
            response = await self.admin(
                lambda a: a.deploy(spec.name, spec.model, spec.engine_config, spec.replicas))
        except ControlPlaneError as e:
            return self.report(False, f"deploy {spec.name}: {e.message}")
        verb = "rolling out new revision" if response.created_revision else "unchanged at revision"
        self.report(True, f"{spec.name}: {verb} {response.revision} ({spec.model})")

    @work(group="action", exclusive=True)
    async def rollback(self: DashboardApp, name: str, preselect: int | None = None) -> None:
        try:
            revisions = await self.admin(lambda a: a.list_revisions(name))
        except ControlPlaneError as e:
            return self.report(False, f"roll back {name}: {e.message}")
        current = next((r for r in revisions if r.current), None)
        if current is None or len(revisions) < 2:
            return self.report(False, f"roll back {name}: it has no other revision to roll back to")
        chosen = await self.push_screen_wait(RollbackDialog(name, revisions, preselect))
        if chosen is None:
            return self._cancelled(f"roll back {name}")
        target = next(r for r in revisions if r.number == chosen)
        changes = revision_changes(current, target)
        details = ["changes:", *_change_lines(changes)] if changes else ["same model and engine config"]
        question = f"Roll back {name} from revision {current.number} to revision {chosen}?"
        if not await self.push_screen_wait(ConfirmDialog(question, details)):
            return self._cancelled(f"roll back {name}")
        try:
            deployment = await self.admin(lambda a: a.rollback(name, chosen))
        except ControlPlaneError as e:
            return self.report(False, f"roll back {name}: {e.message}")
        self.report(True, f"{name}: rolled back to revision {deployment.revision}")

    @work(group="action", exclusive=True)
    async def scale(self: DashboardApp, name: str) -> None:
        deployment = self.store.deployments.get(name)
        current = deployment.desired_replicas if deployment is not None else 0
        count = await self.push_screen_wait(ScaleDialog(name, current))
        if count is None:
            return self._cancelled(f"scale {name}")
        if not await self.push_screen_wait(ConfirmDialog(f"Scale {name} from {current} to {count} replicas?")):
            return self._cancelled(f"scale {name}")
        try:
            scaled = await self.admin(lambda a: a.scale(name, count))
        except ControlPlaneError as e:
            return self.report(False, f"scale {name}: {e.message}")
        self.report(True, f"{name}: scaled to {scaled.desired_replicas} replica(s)")

    @work(group="action", exclusive=True)
    async def drain(self: DashboardApp, node: str) -> None:
        known = self.store.nodes.get(node)
        replicas = known.replica_count if known is not None else 0
        details = [f"{replicas} replica(s) there move to other nodes once their replacements are ready",
                   "no new replicas are placed on it"]
        if not await self.push_screen_wait(ConfirmDialog(f"Drain node {node}?", details)):
            return self._cancelled(f"drain {node}")
        try:
            drained = await self.admin(lambda a: a.drain_node(node))
        except ControlPlaneError as e:
            return self.report(False, f"drain {node}: {e.message}")
        self.report(True, f"node {drained.name}: {drained.state}")
