"""The `:` command palette (k9s's habit): go to a screen, or act on any deployment or node by name."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, cast

from textual.command import DiscoveryHit, Hit, Hits, Provider

if TYPE_CHECKING:
    from llmctl.tui.app import DashboardApp


class DashboardCommands(Provider):
    def _commands(self) -> list[tuple[str, Callable[[], object], str]]:
        app = cast("DashboardApp", self.app)
        found: list[tuple[str, Callable[[], object], str]] = [
            ("fleet", app.action_fleet, "nodes and deployments"),
            ("events", app.action_events, "the audit log, live"),
            ("deploy", partial(app.deploy, None), "deploy a model: form, then confirm"),
            ("help", app.action_help, "every key"),
            ("quit", app.exit, "leave the dashboard"),
        ]
        for name, deployment in sorted(app.store.deployments.items()):
            found += [
                (f"deployment {name}", partial(app.open_deployment, name),
                 "revisions, replicas, latency, quality"),
                (f"deploy {name}", partial(app.deploy, deployment), "a new revision: form, then confirm"),
                (f"rollback {name}", partial(app.rollback, name), "choose a revision, then confirm"),
                (f"scale {name}", partial(app.scale, name), "set the replica count, then confirm"),
            ]
        for node in sorted(app.store.nodes):
            found.append((f"drain {node}", partial(app.drain, node), "stop placing replicas there (confirm)"))
        return found

    async def discover(self) -> Hits:
        for name, callback, help_text in self._commands():
            yield DiscoveryHit(name, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, callback, help_text in self._commands():
            if (score := matcher.match(name)) > 0:
                yield Hit(score, matcher.highlight(name), callback, help=help_text)
