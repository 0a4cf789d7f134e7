"""A deployment's latency percentiles (TTFT p50/p95, TPOT p50) over the kept history, against seconds
before the newest sample. A percentile no replica reported is left out, not drawn as 0."""

from __future__ import annotations

from textual_plotext import PlotextPlot

from llmctl.tui.history import History


class LatencyPlot(PlotextPlot):
    def __init__(self) -> None:
        super().__init__(id="latency-plot")
        self.border_title = "Latency over the last minutes"
        self._drawn: tuple[int, float] | None = None

    def show(self, history: History | None) -> None:
        lines = [(label, history.series(stat) if history is not None else []) for stat, label in LINES]
        lines = [(label, points) for label, points in lines if points]
        newest = max((points[-1][0] for _, points in lines), default=0.0)
        key = (tuple(len(points) for _, points in lines), newest)
        if key == self._drawn:
            return  # nothing new: skip the redraw
        self._drawn = key
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.xlabel("seconds ago")
        if lines:
            plt.title("latency (ms)")
            for label, points in lines:
                plt.plot([at - newest for at, _ in points], [value * 1000 for _, value in points],
                         marker="braille", label=label)
        else:
            plt.title("latency (ms): no replica has reported latency yet")
        self.refresh()


LINES = (("ttft_p50_s", "TTFT p50"), ("ttft_p95_s", "TTFT p95"), ("tpot_p50_s", "TPOT p50"))
