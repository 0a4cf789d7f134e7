"""nvitop-style bars for one GPU's utilization and memory, as table cells.

A reading the GPU does not support is "N/A" in place of the bar: an empty bar would read as 0%.
"""

from __future__ import annotations

from rich.text import Text

from llmctl.tui.format import NA, gib

BAR_WIDTH = 10
FULL, EMPTY = "█", "░"


def _load_style(fraction: float) -> str:
    return "red" if fraction >= 0.9 else "yellow" if fraction >= 0.6 else "green"


def bar(fraction: float, width: int = BAR_WIDTH) -> Text:
    fraction = min(max(fraction, 0.0), 1.0)
    filled = round(fraction * width)
    text = Text(FULL * filled, style=_load_style(fraction))
    text.append(EMPTY * (width - filled), style="dim")
    return text


def utilization_bar(percent: float | None, width: int = BAR_WIDTH) -> Text:
    """`██████░░░░  60%`, or N/A."""
    if percent is None:
        return Text(NA, style="dim")
    text = bar(percent / 100, width)
    text.append(f" {percent:3.0f}%")
    return text


def memory_bar(used: int | None, total: int | None, width: int = BAR_WIDTH) -> Text:
    """`████░░░░░░ 31.9/80.0G`; the used amount alone when the total is unknown; N/A without a reading."""
    if used is None:
        return Text(NA, style="dim")
    if not total:
        return Text(f"{gib(used)}G used")
    text = bar(used / total, width)
    text.append(f" {gib(used)}/{gib(total)}G")
    return text
