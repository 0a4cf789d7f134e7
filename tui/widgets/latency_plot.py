"""TTFT p95 of a deployment over the kept history, plotted against seconds before the newest sample."""

from __future__ import annotations

from textual_plotext import PlotextPlot

from tui.history import History


class LatencyPlot(PlotextPlot):
    def __init__(self) -> None:
        super().__init__(id="latency-plot")
        self.border_title = "Latency over the last minutes"
        self._drawn: tuple[int, float] | None = None

    def show(self, history: History | None) -> None:
        points = history.series("ttft_p95_s") if history is not None else []
        key = (len(points), points[-1][0] if points else 0.0)
        if key == self._drawn:
            return  # nothing new: skip the redraw
        self._drawn = key
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title("TTFT p95 (ms)")
        plt.xlabel("seconds ago")
        if points:
            newest = points[-1][0]
            plt.plot([at - newest for at, _ in points], [value * 1000 for _, value in points],
                     marker="braille")
        else:
            plt.title("TTFT p95 (ms): no replica has reported latency yet")
        self.refresh()
