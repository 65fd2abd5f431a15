"""The overview's chart of turns per agent over time, laid out in Python and drawn by the
template as inline SVG (no script, nothing fetched): one stacked bar per time bucket, one colour
per entity (the busiest few; the rest together as "others")."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from ..models import Activity

__all__ = ["Chart", "layout"]

WIDTH: Final = 960
HEIGHT: Final = 280
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 12, 40
MAX_SERIES: Final = 8
# Colour-blind safe (Okabe-Ito's, and an indigo), then grey for the others.
COLOURS: Final = (
    "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#332288",
)  # fmt: skip
OTHERS_COLOUR: Final = "#999999"
NO_ENTITY: Final = "(no agent)"
OTHERS: Final = "others"


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    colour: str
    title: str


@dataclass(frozen=True, slots=True)
class Tick:
    position: float
    label: str


@dataclass(frozen=True, slots=True)
class Series:
    label: str
    colour: str
    runs: int


@dataclass(slots=True)
class Chart:
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    top: int = TOP
    plot_width: float = WIDTH - LEFT - RIGHT
    plot_height: float = HEIGHT - TOP - BOTTOM
    bars: list[Bar] = field(default_factory=list)
    y_ticks: list[Tick] = field(default_factory=list)
    x_ticks: list[Tick] = field(default_factory=list)
    series: list[Series] = field(default_factory=list)
    total: int = 0
    title: str = ""


def entity_label(entity: str | None) -> str:
    return NO_ENTITY if entity is None else entity


def _nice_ceiling(value: int) -> int:
    """The smallest of 1, 2, 5 times a power of ten that is >= value (at least 1)."""
    step = 1
    while True:
        for factor in (1, 2, 5):
            if step * factor >= value:
                return step * factor
        step *= 10


def _bucket_label(start: datetime, bucket: str, previous: datetime | None) -> str:
    if bucket == "day":
        return start.strftime("%b %d")
    if previous is None or previous.date() != start.date():
        return start.strftime("%b %d %H:00")
    return start.strftime("%H:00")


def layout(activity: Activity) -> Chart:
    buckets = activity.buckets
    index = {start: i for i, start in enumerate(buckets)}
    per_entity: dict[str | None, int] = {}
    for turn in activity.turns:
        per_entity[turn.entity_id] = per_entity.get(turn.entity_id, 0) + turn.runs
    ranked = sorted(per_entity, key=lambda e: (-per_entity[e], e is None, e or ""))
    shown = ranked[:MAX_SERIES] if len(ranked) <= MAX_SERIES else ranked[: MAX_SERIES - 1]
    colour = {entity: COLOURS[i] for i, entity in enumerate(shown)}
    chart = Chart(total=sum(per_entity.values()))
    chart.series = [Series(entity_label(e), colour[e], per_entity[e]) for e in shown]
    others = [e for e in ranked if e not in colour]
    if others:
        chart.series.append(Series(OTHERS, OTHERS_COLOUR, sum(per_entity[e] for e in others)))
    # stacks[i]: (label, colour, runs) from the bottom up, in the legend's order.
    stacks: list[dict[str, tuple[str, int]]] = [{} for _ in buckets]
    for turn in activity.turns:
        i = index.get(turn.start)
        if i is None:
            continue
        label = entity_label(turn.entity_id) if turn.entity_id in colour else OTHERS
        hue = colour.get(turn.entity_id, OTHERS_COLOUR)
        _, before = stacks[i].get(label, (hue, 0))
        stacks[i][label] = (hue, before + turn.runs)
    peak = max((sum(n for _, n in stack.values()) for stack in stacks), default=0)
    step = _nice_ceiling(-(-peak // 4))  # four gridlines of a round step
    top = 4 * step
    slot = chart.plot_width / max(len(buckets), 1)
    scale = chart.plot_height / top
    order = [s.label for s in chart.series]
    for i, stack in enumerate(stacks):
        base = chart.top + chart.plot_height
        when = buckets[i].strftime("%Y-%m-%d %H:00 UTC")
        for label in order:
            if label not in stack:
                continue
            hue, runs = stack[label]
            height = runs * scale
            base -= height
            chart.bars.append(
                Bar(
                    x=round(chart.left + i * slot + slot * 0.1, 2),
                    y=round(base, 2),
                    width=round(slot * 0.8, 2),
                    height=round(height, 2),
                    colour=hue,
                    title=f"{label}: {runs:,} run{'s' if runs != 1 else ''}, {when}",
                )
            )
    for k in range(5):
        chart.y_ticks.append(
            Tick(round(chart.top + chart.plot_height - k * step * scale, 2), f"{k * step:,}")
        )
    every = max(1, len(buckets) // 8)
    previous = None
    for i in range(0, len(buckets), every):
        chart.x_ticks.append(
            Tick(
                round(chart.left + (i + 0.5) * slot, 2),
                _bucket_label(buckets[i], activity.bucket, previous),
            )
        )
        previous = buckets[i]
    per = "hour" if activity.bucket == "hour" else "day"
    chart.title = f"Runs per {per} and agent, {chart.total:,} in all"
    return chart
