"""A deployment's quality per revision (GetQuality's trend): served minus reference mean log-likelihood per
token of each revision's latest scored samples, oldest first. 0 (the grey line) is as good as the reference;
the orange line is the tolerance, below which answers are worse than the deployment accepts. One line per
revision that has samples (the newest few), labelled with its number and state and coloured by the state:
red degraded, yellow watch, a cool colour (by revision number) ok."""

from __future__ import annotations

from textual_plotext import PlotextPlot

from llmctl.controlplane.proto import llmctl_pb2 as pb

MAX_REVISIONS = 4
"""Revisions drawn at most: the current one and the newest others (more lines than this do not read)."""
STATE_COLORS = {"degraded": "red+", "watch": "yellow"}
OK_COLORS = ("cyan+", "green+", "blue+")
"""By revision number, so an ok revision keeps its colour from poll to poll."""
REFERENCE_COLOR, TOLERANCE_COLOR = "gray", "orange"


def plotted(report: pb.QualityReport) -> list[pb.RevisionQuality]:
    """The revisions drawn, oldest first."""
    sampled = sorted((r for r in report.revisions if r.trend), key=lambda r: (not r.current, -r.revision))
    return sorted(sampled[:MAX_REVISIONS], key=lambda r: r.revision)


class QualityPlot(PlotextPlot):
    def __init__(self) -> None:
        super().__init__(id="quality-plot")
        self.border_title = "Quality: log-likelihood/token vs the reference (nats)"
        self._drawn: tuple[object, ...] | None = None
        self.labels: list[str] = []
        """The series drawn, as their legend reads (tests look at it)."""

    def show(self, report: pb.QualityReport | None, error: str = "") -> None:
        """The latest report (None: none has come yet), and why the latest poll of it failed, if it did."""
        revisions = plotted(report) if report is not None else []
        threshold = report.policy.threshold if report is not None else 0.0
        sampling = report is not None and report.policy.sample_rate > 0
        key = (tuple((r.revision, r.state, tuple(r.trend)) for r in revisions), threshold, sampling,
               report is None, error)
        if key == self._drawn:
            return  # nothing new: skip the redraw
        self._drawn = key
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        self.labels = [f"rev {r.revision} {r.state or 'ok'}" for r in revisions]
        if not revisions:
            plt.title(_empty_title(report, sampling, error))
            self.refresh()
            return
        plt.xlabel("scored samples, oldest first")
        longest = max(len(r.trend) for r in revisions)
        plt.xticks(sorted({round(1 + (longest - 1) * k / 4) for k in range(5)}))
        for r, label in zip(revisions, self.labels, strict=True):
            color = STATE_COLORS.get(r.state, OK_COLORS[r.revision % len(OK_COLORS)])
            plt.plot(list(range(1, len(r.trend) + 1)), list(r.trend), marker="braille", label=label,
                     color=color)
        edges = [1, max(longest, 2)]
        plt.plot(edges, [0.0, 0.0], marker="braille", color=REFERENCE_COLOR, label="reference")
        if threshold > 0:
            plt.plot(edges, [-threshold, -threshold], marker="braille", color=TOLERANCE_COLOR,
                     label=f"tolerance -{threshold:g}")
        self.refresh()


def _empty_title(report: pb.QualityReport | None, sampling: bool, error: str) -> str:
    if report is None:
        return "no quality report: see the line above" if error else "loading the quality report…"
    if not sampling:
        return "quality sampling is off"
    return "no scored samples yet"
