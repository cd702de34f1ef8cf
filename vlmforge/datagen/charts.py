"""Bar, line and pie charts drawn with matplotlib: the ChartQA-like half of the embedded data."""

from __future__ import annotations

import random
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")  # no display here; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from .scenes import COLORS  # noqa: E402

CHART_KINDS = ("bar", "line", "pie")


@dataclass(frozen=True)
class Chart:
    kind: str
    colors: tuple[str, ...]  # one per bar / slice; the line's colour for a line chart
    values: tuple[int, ...]

    @property
    def largest_color(self) -> str:
        return self.colors[self.values.index(max(self.values))]

    @property
    def smallest_color(self) -> str:
        return self.colors[self.values.index(min(self.values))]

    @property
    def trend(self) -> str:
        return "up" if self.values[-1] > self.values[0] else "down"


def sample_chart(rng: random.Random) -> Chart:
    kind = rng.choice(CHART_KINDS)
    if kind == "line":
        start, end = rng.sample(range(1, 10), 2)
        steps = np.linspace(start, end, 5) + np.array([0, *(rng.uniform(-0.8, 0.8) for _ in range(3)), 0])
        return Chart(kind, (rng.choice(sorted(COLORS)),), tuple(int(round(v * 10)) for v in steps))
    count = rng.randint(3, 5)
    # Distinct values with a clear winner and loser, so "largest"/"smallest" have one answer a glance can see.
    values = sorted(rng.sample(range(2, 10), count))
    values[-1] += 3
    rng.shuffle(values)
    return Chart(kind, tuple(rng.sample(sorted(COLORS), count)), tuple(values))


def render_chart(chart: Chart, image_size_px: int) -> Image.Image:
    dpi = 100
    figure = plt.figure(figsize=(image_size_px / dpi, image_size_px / dpi), dpi=dpi)
    try:
        axes = figure.add_axes((0.08, 0.08, 0.84, 0.84))
        rgb = [tuple(c / 255 for c in COLORS[name]) for name in chart.colors]
        if chart.kind == "bar":
            axes.bar(range(len(chart.values)), chart.values, color=rgb, width=0.7)
            axes.set_ylim(0, 14)
        elif chart.kind == "line":
            axes.plot(range(len(chart.values)), chart.values, color=rgb[0], linewidth=3)
            axes.set_ylim(0, 100)
        else:
            axes.pie(chart.values, colors=rgb, startangle=90, counterclock=False)
        axes.set_xticks([])
        axes.set_yticks([])
        figure.canvas.draw()
        # Raw pixels, not savefig: no metadata, so the same chart is the same bytes.
        pixels = np.asarray(figure.canvas.buffer_rgba())[..., :3]
        return Image.fromarray(pixels.copy())
    finally:
        plt.close(figure)
