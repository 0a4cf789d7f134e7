"""A one-line sparkline as a table cell: `▁▂▄▇█▅` over buckets of a History, blank where there was no
reading (a gap is not a zero)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text

TICKS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float | None], style: str = "cyan") -> Text:
    """Scaled from 0 to the largest value shown; all zeros draw the lowest tick."""
    present = [v for v in values if v is not None]
    top = max(present, default=0.0)
    chars = []
    for value in values:
        if value is None:
            chars.append(" ")
        elif top <= 0:
            chars.append(TICKS[0])
        else:
            chars.append(TICKS[min(len(TICKS) - 1, int(value / top * (len(TICKS) - 1) + 0.5))])
    return Text("".join(chars), style=style)
