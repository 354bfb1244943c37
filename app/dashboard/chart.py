"""The overview's chart of daily margin, drawn on the server as an inline SVG's geometry (no
script, no image request): one bar per day, above the axis for a gain, below for a loss."""

from dataclasses import dataclass

from app.money import render
from app.report import DayLine

WIDTH, HEIGHT, PAD_LEFT, PAD_BOTTOM, PAD_TOP = 760, 200, 64, 22, 10


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    gain: bool
    title: str  # the day's figures, shown by the browser on hover (an SVG <title>)


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    axis_y: float
    bars: list[Bar]
    labels: list[tuple[float, str]]  # (x, day) under the axis, every few days
    top_label: str  # the largest gain (or 0) at the top of the scale
    bottom_label: str  # the largest loss (or 0) at the bottom
    total: int


def margin_chart(days: list[DayLine], currency: str) -> Chart:
    top = max([0, *(d.margin for d in days)])
    bottom = min([0, *(d.margin for d in days)])
    span = (top - bottom) or 1
    plot_h = HEIGHT - PAD_TOP - PAD_BOTTOM
    axis_y = PAD_TOP + plot_h * top / span
    step = (WIDTH - PAD_LEFT) / max(1, len(days))
    bars, labels = [], []
    for i, day in enumerate(days):
        size = plot_h * abs(day.margin) / span
        x = PAD_LEFT + i * step + step * 0.15
        y = axis_y - size if day.margin >= 0 else axis_y
        title = (
            f"{day.day.isoformat()}: margin {render(day.margin)} {currency}"
            f" (revenue {render(day.revenue)}, upstream cost {render(day.upstream_cost)},"
            f" {day.orders} order{'' if day.orders == 1 else 's'})"
        )
        bars.append(
            Bar(
                round(x, 1),
                round(y, 1),
                round(step * 0.7, 1),
                round(size, 1),
                day.margin >= 0,
                title,
            )
        )
        if i % 5 == 0 or i == len(days) - 1:
            labels.append((round(PAD_LEFT + i * step + step / 2, 1), day.day.strftime("%m-%d")))
    return Chart(
        WIDTH,
        HEIGHT,
        round(axis_y, 1),
        bars,
        labels,
        render(top),
        render(bottom),
        sum(d.margin for d in days),
    )
