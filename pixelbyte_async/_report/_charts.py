"""
The report's charts as inline SVG: a timeline of every job, jobs in flight, spend.

Drawn here rather than in the browser: the page needs no chart library, prints,
and reads the same with scripts off.  Colours are CSS classes (the page's light
and dark palettes); every chart has a ``<title>`` and a ``<desc>`` in words.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from html import escape

from pixelbyte_async._inputs import usd

from ._data import ReportRow


__all__ = ["concurrency_chart", "spend_chart", "timeline_chart"]

_WIDTH = 960
_LEFT = 56  # room for the y labels
_RIGHT = 16
_TOP = 12
_AXIS = 28  # room for the x labels


def _nice_step(span: float, ticks: int = 6) -> float:
    """A step of 1, 2 or 5 × 10ⁿ giving about *ticks* ticks over *span*."""
    if span <= 0:
        return 1.0
    raw = span / ticks
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if raw <= factor * power:
            return float(factor * power)
    return float(10 * power)  # pragma: no cover -- the loop always returns


#: Steps of a time axis, in seconds: what a clock's face reads well.
_TIME_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400)


def _time_step(span: float, ticks: int = 6) -> float:
    """A step from `_TIME_STEPS` giving at most about *ticks* ticks over *span*."""
    for step in _TIME_STEPS:
        if span / step <= ticks:
            return float(step)
    return _nice_step(span, ticks)


def _seconds(value: float) -> str:
    """*value* seconds for an axis: ``45s``, ``2m``, ``1h30m``."""
    value = round(value)
    if value < 120:  # noqa: PLR2004 -- readable up to two minutes
        return f"{value}s"
    minutes = value // 60
    if minutes < 120:  # noqa: PLR2004
        return f"{minutes}m" if value % 60 == 0 else f"{minutes}m{value % 60:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


class _Frame:
    """An x axis of seconds from *start* to *end*, over a plot of *height* pixels."""

    def __init__(self, start: float, end: float, height: float) -> None:
        self.start = start
        self.span = max(end - start, 1e-9)
        self.height = height
        self.plot_width = _WIDTH - _LEFT - _RIGHT

    def x(self, t: float) -> float:
        return _LEFT + (t - self.start) / self.span * self.plot_width

    def x_axis(self) -> str:
        step = _time_step(self.span)
        parts = [
            (
                f'<line class="axis" x1="{_LEFT}" x2="{_WIDTH - _RIGHT}" '
                f'y1="{_TOP + self.height:.1f}" y2="{_TOP + self.height:.1f}"/>'
            )
        ]
        tick = 0.0
        while tick <= self.span + 1e-9:
            x = self.x(self.start + tick)
            parts.append(
                f'<line class="grid" x1="{x:.1f}" x2="{x:.1f}" y1="{_TOP}" '
                f'y2="{_TOP + self.height:.1f}"/>'
                f'<text class="label" x="{x:.1f}" y="{_TOP + self.height + 18:.1f}" '
                f'text-anchor="middle">{_seconds(tick)}</text>'
            )
            tick += step
        return "".join(parts)


def _svg(chart_id: str, title: str, desc: str, height: float, body: str) -> str:
    total = _TOP + height + _AXIS
    return (
        f'<svg class="chart" id="{chart_id}" viewBox="0 0 {_WIDTH} {total:.0f}" '
        f'role="img" aria-labelledby="{chart_id}-t {chart_id}-d" '
        f'preserveAspectRatio="xMinYMin meet">'
        f'<title id="{chart_id}-t">{escape(title)}</title>'
        f'<desc id="{chart_id}-d">{escape(desc)}</desc>{body}</svg>'
    )


def _span(rows: Sequence[ReportRow]) -> tuple[float, float] | None:
    """The first submit and the last moment any row's times know of."""
    starts = [r.submitted_at for r in rows if r.submitted_at is not None]
    if not starts:
        return None
    moments = [t for r in rows for t in (r.submitted_at, r.running_at, r.ended_at) if t]
    return min(starts), max(moments)


def timeline_chart(rows: Sequence[ReportRow]) -> str | None:
    """
    One bar per job, in submit order: waiting (light), running, ended.

    A job whose end is not known (still running, or the run was interrupted)
    is drawn to the chart's end, hatched.  ``None`` when no row has a submit time.
    """
    span = _span(rows)
    if span is None:
        return None
    timed = sorted(
        (r for r in rows if r.submitted_at is not None),
        key=lambda r: (r.submitted_at, r.position),
    )
    # At most about 600 px tall: a big batch's bars get thin, its shape stays.
    lane = min(14.0, max(600 / len(timed), 0.25))
    height = lane * len(timed)
    frame = _Frame(span[0], span[1], height)
    parts = [frame.x_axis()]
    for i, row in enumerate(timed):
        assert row.submitted_at is not None  # noqa: S101 -- filtered above
        y = _TOP + i * lane
        bar = max(1.0, lane - (1 if lane > 3 else 0))  # noqa: PLR2004 -- a gap when room
        end = row.ended_at if row.ended_at is not None else span[1]
        running = row.running_at if row.running_at is not None else end
        open_end = "" if row.ended_at is not None else " open"
        tip = escape(_tip(row))
        x0, x1, x2 = frame.x(row.submitted_at), frame.x(running), frame.x(end)
        parts.append(
            f'<g class="job {row.group}{open_end}"><title>{tip}</title>'
            f'<rect class="queued" x="{x0:.1f}" y="{y:.1f}" '
            f'width="{max(x1 - x0, 0.5):.1f}" height="{bar:.1f}"/>'
            f'<rect class="run" x="{x1:.1f}" y="{y:.1f}" '
            f'width="{max(x2 - x1, 0.5):.1f}" height="{bar:.1f}"/></g>'
        )
    ended = sum(1 for r in timed if r.ended_at is not None)
    desc = (
        f"{len(timed)} jobs over {_seconds(span[1] - span[0])}; {ended} with a "
        "known end.  Each bar runs from the submit (light: waiting in the queue) "
        "through processing to the end."
    )
    return _svg("timeline", "Timeline of every job", desc, height, "".join(parts))


def _tip(row: ReportRow) -> str:
    words = [f"{row.key}: {row.state}"]
    if row.submitted_at is not None and row.ended_at is not None:
        words.append(f"{_seconds(row.ended_at - row.submitted_at)} from submit to end")
    if row.job_id:
        words.append(row.job_id)
    return ", ".join(words)


def _steps(events: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """Running totals of (time, change) events, in time order."""
    total = 0.0
    points: list[tuple[float, float]] = []
    for t, change in sorted(events):
        total += change
        if points and points[-1][0] == t:
            points[-1] = (t, total)
        else:
            points.append((t, total))
    return points


def _step_path(frame: _Frame, points: list[tuple[float, float]], top: float) -> str:
    """An SVG path of a step function through *points*, y scaled to *top*."""

    def y(value: float) -> float:
        return _TOP + frame.height - value / top * frame.height

    commands = [f"M{frame.x(frame.start):.1f},{y(0):.1f}"]
    last = 0.0
    for t, value in points:
        x = frame.x(t)
        commands.append(f"L{x:.1f},{y(last):.1f}L{x:.1f},{y(value):.1f}")
        last = value
    commands.append(f"L{frame.x(frame.start + frame.span):.1f},{y(last):.1f}")
    return "".join(commands)


def _y_axis(frame: _Frame, top: float, label: str) -> str:
    step = _nice_step(top, 4)
    parts = []
    value = 0.0
    while value <= top + 1e-9:
        y = _TOP + frame.height - value / top * frame.height
        text = usd(value) if label == "usd" else f"{value:g}"
        parts.append(
            f'<line class="grid" x1="{_LEFT}" x2="{_WIDTH - _RIGHT}" '
            f'y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text class="label" x="{_LEFT - 6}" y="{y + 4:.1f}" '
            f'text-anchor="end">{text}</text>'
        )
        value += step
    return "".join(parts)


def concurrency_chart(rows: Sequence[ReportRow]) -> str | None:
    """Jobs in flight (submitted, not yet ended) over time."""
    span = _span(rows)
    if span is None:
        return None
    events: list[tuple[float, float]] = []
    for row in rows:
        if row.submitted_at is None:
            continue
        events.append((row.submitted_at, 1))
        if row.ended_at is not None:
            events.append((row.ended_at, -1))
    points = _steps(events)
    peak = max((v for _, v in points), default=0)
    height = 160.0
    frame = _Frame(span[0], span[1], height)
    top = max(peak, 1) * 1.1
    body = (
        _y_axis(frame, top, "count")
        + frame.x_axis()
        + f'<path class="line" d="{_step_path(frame, points, top)}"/>'
    )
    desc = f"At most {peak:g} jobs in flight at once, over {_seconds(frame.span)}."
    return _svg("concurrency", "Jobs in flight", desc, height, body)


def spend_chart(rows: Sequence[ReportRow], budget: int | None) -> str | None:
    """What the jobs cost, summed by submit time (net of refunds), and the budget."""
    span = _span(rows)
    if span is None:
        return None
    points = _steps(
        (r.submitted_at, r.spend)
        for r in rows
        if r.submitted_at is not None and r.spend
    )
    total = points[-1][1] if points else 0
    height = 160.0
    frame = _Frame(span[0], span[1], height)
    top = max(total, budget or 0, 1) * 1.1
    body = _y_axis(frame, top, "usd") + frame.x_axis()
    if budget is not None:
        y = _TOP + height - budget / top * height
        body += (
            f'<line class="budget" x1="{_LEFT}" x2="{_WIDTH - _RIGHT}" '
            f'y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text class="label budget-label" x="{_WIDTH - _RIGHT}" '
            f'y="{y - 5:.1f}" text-anchor="end">budget {usd(budget)}</text>'
        )
    body += f'<path class="line spend" d="{_step_path(frame, points, top)}"/>'
    desc = f"{usd(total)} spent in all, net of refunds" + (
        f", against a budget of {usd(budget)}." if budget is not None else "."
    )
    return _svg("spend", "Spend over time", desc, height, body)
