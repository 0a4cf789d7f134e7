"""A deployment's newest optimization run, live: one line on where it stands (state, goal, bottleneck, what it
is doing or how it ended) over a table of its steps (technique, state, throughput, the gain with its 95%
interval, the worst quality drop, the reason cut to fit). `llmctl optimize report RUN` has every number.

The report is the run's report_json (docs/optimizer.md); the cells come from it alone, using the optimizer's
own pure report helpers for the numbers both show."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.events import Resize
from textual.widgets import Static

from llmctl.controlplane.optimizer.report import GAIN_LABELS, NUMERIC_KEYS, UNMEASURED_STATES, wall_time
from llmctl.tui.format import clock, head
from llmctl.tui.widgets.keyed_table import Cell, Column, KeyedTable, plain

STEP_STYLES = {"kept": "bold green", "rejected": "red", "failed": "bold red", "running": "bold yellow",
               "pending": "dim", "skipped": "dim", "cancelled": "dim"}
RUN_STYLES = {"running": "bold yellow", "succeeded": "bold green", "failed": "bold red", "cancelled": "dim"}
QUALITY_NAMES = {"perplexity": "perplexity", "kl_divergence": "KL", "top1_agreement": "top-1",
                 "accuracy": "accuracy"}
REASON_MIN = 12
"""The reason column is never cut below this many characters (the table scrolls sideways instead)."""


def _dim(text: str) -> Text:
    return Text(text, style="dim")


def gain_cell(gain: dict[str, Any] | None) -> Cell:
    """`+38.4% (+31.1..+45.7)`: the goal metric's move with its interval, read the way the metric moved (a
    latency gain is a decrease); other metrics than throughput are named."""
    if not gain or gain.get("estimate") is None:
        return _dim("-")
    estimate, low, high = gain["estimate"], gain.get("low"), gain.get("high")
    if not gain.get("higher_is_better", True):
        estimate, low, high = -estimate, None if high is None else -high, None if low is None else -low
    metric = gain.get("metric") or ""
    label = "" if metric == "throughput_tok_s" else f"{GAIN_LABELS.get(metric, metric)} "
    text = f"{label}{100 * estimate:+.1f}%"
    if gain.get("pairs", 0) > 1 and low is not None and high is not None:
        text += f" ({100 * low:+.1f}..{100 * high:+.1f})"
    return Text(text)


def quality_cell(step: dict[str, Any], max_drop: float | None) -> Cell:
    """The quality metric that dropped most against the reference, red beyond the run's limit; "unchanged"
    for a change that cannot alter what the model computes."""
    quality = step.get("quality")
    if not quality:
        unchanged = (step.get("technique") != "baseline" and step.get("state") not in UNMEASURED_STATES
                     and step.get("change") and not NUMERIC_KEYS & set(step["change"]))
        return _dim("unchanged" if unchanged else "-")
    drops = {k: v["drop"] for k, v in quality.items() if isinstance(v, dict) and v.get("drop") is not None}
    if not drops:
        return _dim("-")
    worst = max(drops, key=lambda k: drops[k])
    beyond = max_drop is not None and drops[worst] > max_drop
    return Text(f"{QUALITY_NAMES.get(worst, worst)} {100 * drops[worst]:.2f}%", style="red" if beyond else "")


def reason_text(step: dict[str, Any]) -> str:
    """The step's reason on one line; what a running step tries."""
    reason = " ".join((step.get("reason") or "").split())
    if not reason and step.get("state") == "running" and step.get("change"):
        return "trying " + ", ".join(f"{k}={v}" for k, v in step["change"].items())
    return reason


def step_cells(step: dict[str, Any], max_drop: float | None) -> tuple[Cell, ...]:
    """Every cell of a step's row but the reason."""
    state = step.get("state") or "?"
    tok_s = (step.get("metrics") or {}).get("throughput_tok_s")
    return (str(step.get("number", "?")), step.get("technique") or "?", Text(state, style=STEP_STYLES.get(state, "")),
            _dim("-") if tok_s is None else Text(f"{tok_s:.1f}"), gain_cell(step.get("gain")),
            quality_cell(step, max_drop))


def status_line(report: dict[str, Any], at: float | None) -> Text:
    """`running  goal throughput  bottleneck kv-memory  step 4 (awq): quality eval ...  5m 25s so far`."""
    state = report.get("state") or "?"
    text = Text.assemble((state, RUN_STYLES.get(state, "")), "  goal ", (report.get("goal") or "?", "bold"))
    bottleneck = (report.get("bottleneck") or {}).get("name")
    text.append("  bottleneck ")
    text.append(bottleneck or "not named yet", style="bold" if bottleneck else "dim")
    where = " ".join((report.get("summary") or report.get("error") or "").split())
    if where:
        text.append(f"  {where}", style="red" if state == "failed" else "")
    text.append(f"  {wall_time(report, at)}", style="dim")
    return text


class StepsTable(KeyedTable):
    """One row per step, keyed by its number. Columns are as wide as their widest cell (the reason's cut to
    the width left), so a cell that grows or a resize redraws the columns; a poll that changes no width
    rewrites only the cells that changed."""

    COLUMNS = (
        Column("number", "#"),
        Column("technique", "TECHNIQUE"),
        Column("state", "STATE"),
        Column("tok_s", "TOK/S"),
        Column("gain", "GAIN (95%)"),
        Column("quality", "QUALITY DROP"),
        Column("reason", "REASON"),
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._report: dict[str, Any] | None = None
        self._widths: list[int] = []

    def show(self, report: dict[str, Any]) -> None:
        self._report = report
        max_drop = (report.get("options") or {}).get("max_quality_drop")
        steps = report.get("steps") or []
        cells = [step_cells(step, max_drop) for step in steps]
        widths = [max([len(column.label), *(len(plain(row[i])) for row in cells)])
                  for i, column in enumerate(self.COLUMNS[:-1])]
        room = self._room(widths)
        rows = {str(step.get("number")): (*row, _reason_cell(step, room)) for step, row in zip(steps, cells, strict=True)}
        widths.append(max([len(self.COLUMNS[-1].label), *(len(plain(row[-1])) for row in rows.values())]))
        if self.is_mounted and widths != self._widths:
            # A column's width changed (a wider gain, a resize): DataTable widens columns only when rows are
            # added, so the columns are set again at their new widths and the rows redrawn (a dozen at most).
            self._widths = widths
            self.clear(columns=True)
            for column, width in zip(self.COLUMNS, widths, strict=True):
                self.add_column(column.label, key=column.key, width=width)
        self.set_rows(rows)

    def _room(self, widths: list[int]) -> int:
        """Characters left for the reason once the other columns take their widths."""
        width = self.size.width or self.app.size.width - 2  # not laid out yet: the screen's width, less a border
        used = sum(w + 2 * self.cell_padding for w in widths) + 2 * self.cell_padding
        return max(REASON_MIN, width - used - 2)  # 2: room for a vertical scrollbar

    def on_resize(self, event: Resize) -> None:
        if self._report is not None:
            self.show(self._report)  # the reasons cut to the new width


def _reason_cell(step: dict[str, Any], room: int) -> Cell:
    text = reason_text(step)
    if not text:
        return _dim("-")
    return Text(head(text, room), style="dim" if step.get("state") in ("running", "skipped") else "")


class OptimizationPanel(Vertical):
    """The newest run of `deployment`, or why there is none to show."""

    def __init__(self, deployment: str) -> None:
        super().__init__(id="optimization")
        self.deployment = deployment
        self.border_title = "Optimization"
        self.status = Text()
        """The status line as shown (tests read it)."""

    def compose(self) -> ComposeResult:
        yield Static(id="optimization-status")
        yield StepsTable(id="optimization-steps")

    def show(self, report: dict[str, Any] | None, *, polled: bool, error: str = "", at: float | None = None) -> None:
        """The newest run's report (None: the deployment has none, or, `polled` False, none was read yet),
        the error of the latest read, if it failed, and when the report was read."""
        steps = self.query_one(StepsTable)
        if report is None:
            self.border_title = "Optimization"
            if error:
                line = Text(f"optimization runs: {error}", style="yellow")
            elif polled:
                line = _dim(f"no optimization runs; `llmctl optimize {self.deployment} --goal throughput` starts one")
            else:
                line = _dim("loading the optimization runs…")
            steps.display = False
        else:
            self.border_title = f"Optimization run {report.get('id', '?')}, started {clock(report.get('created_at'))}"
            line = status_line(report, at)
            if error:
                line.append(f"  (the latest read failed: {error})", style="yellow")
            steps.display = True
            steps.show(report)
        if not _same_text(line, self.status):
            self.status = line
            self.query_one("#optimization-status", Static).update(line, layout=False)


def _same_text(a: Text, b: Text) -> bool:
    return a.plain == b.plain and a.spans == b.spans and str(a.style) == str(b.style)
