"""How the dashboard writes numbers: units, "N/A" for a reading the control plane does not have (never a
made-up 0), local clock times, and short names that fit a column."""

from __future__ import annotations

import time

from rich.text import Text

NA = "N/A"
GIB = 1 << 30


def na() -> Text:
    return Text(NA, style="dim")


def number(value: float | None, digits: int = 1, unit: str = "") -> Text:
    return na() if value is None else Text(f"{value:.{digits}f}{unit}")


def milliseconds(seconds: float | None) -> Text:
    return na() if seconds is None else Text(f"{seconds * 1000:.0f}ms")


def percent(fraction: float | None) -> Text:
    return na() if fraction is None else Text(f"{fraction * 100:.0f}%")


def temperature(celsius: float | None) -> Text:
    if celsius is None:
        return na()
    style = "red" if celsius >= 85 else "yellow" if celsius >= 75 else ""
    return Text(f"{celsius:.0f}°C", style=style)


def power(watts: float | None, limit_watts: float | None) -> Text:
    if watts is None:
        return na()
    if limit_watts is None:
        return Text(f"{watts:.0f}W")
    return Text(f"{watts:.0f}/{limit_watts:.0f}W")


def gib(value: int) -> str:
    return f"{value / GIB:.1f}"


def clock(at: float | None) -> str:
    """HH:MM:SS in local time; "-" when there is no time."""
    return time.strftime("%H:%M:%S", time.localtime(at)) if at else "-"


def date_time(at: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(at)) if at else "-"


def short_time(at: float | None) -> str:
    """MM-DD HH:MM in local time."""
    return time.strftime("%m-%d %H:%M", time.localtime(at)) if at else "-"


def short_gpu_name(name: str) -> str:
    """"NVIDIA H100 80GB HBM3" -> "H100 80GB HBM3": the vendor is the same on every row."""
    for prefix in ("NVIDIA ", "Tesla "):
        name = name.removeprefix(prefix)
    return name


def tail(text: str, width: int) -> str:
    """The end of a long value (a model folder's path ends in its name), marked with an ellipsis."""
    return text if len(text) <= width else "…" + text[-(width - 1):]


def head(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def state_text(state: str) -> Text:
    """A node or replica state, coloured so trouble stands out."""
    style = {
        "healthy": "green",
        "ready": "green",
        "unhealthy": "bold red",
        "failed": "bold red",
        "draining": "yellow",
        "starting": "yellow",
        "pending": "yellow",
        "stopped": "dim",
    }.get(state.lower(), "")
    return Text(state.lower(), style=style)


def quality_badge(state: str, sampling: bool, *, pad: bool = False) -> Text:
    """A deployment's quality judgement: DEGRADED stands out (white on red), watch in yellow, ok dim; "off"
    while no answers are sampled. `pad`: a space either side of DEGRADED, where there is room."""
    if not sampling:
        return Text("off", style="dim")
    state = (state or "ok").lower()
    if state == "degraded":
        return Text(" DEGRADED " if pad else "DEGRADED", style="bold white on red")
    if state == "watch":
        return Text("watch", style="bold yellow")
    return Text(state, style="dim")
