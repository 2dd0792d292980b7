"""Inline SVG charts for the HTML report, drawn in Python so the page needs no
script, font or network to show them.

Four shapes cover the report: a time chart (stacked columns per interval and
lines over them), an x/y chart (numeric x, lines with markers), horizontal bars,
and one stacked horizontal bar. Every chart has tick labels, axis titles with
units and a legend; hover readouts are ``<title>`` elements, which browsers
show as tooltips. All text is escaped here, so callers pass plain strings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from typing import Protocol

WIDTH = 640
FONT_PX = 12
# Mean advance of the system sans-serif at 12 px; text is placed, never measured.
CHAR_PX = 6.6
TEXT = "#495057"
AXIS = "#adb5bd"
GRID = "#edf0f2"
# Hover columns beyond this many would cost more page weight than they are worth.
MAX_HOVER = 600


@dataclass(frozen=True)
class Line:
    """A series over the chart's x positions; None leaves a gap."""

    name: str
    color: str
    ys: Sequence[float | None]
    dashed: bool = False
    markers: bool = False
    connect: bool = True
    # Draw each value as a flat step over its interval instead of a point at its middle.
    step: bool = False
    marker_notes: Sequence[str] = ()


@dataclass(frozen=True)
class Layer:
    """One layer of stacked columns: a value per interval."""

    name: str
    color: str
    values: Sequence[float]


@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    color: str
    note: str = ""


@dataclass(frozen=True)
class Mark:
    """A labelled vertical reference line at ``x``."""

    x: float
    label: str
    color: str


@dataclass(frozen=True)
class Frame:
    """The plot area inside the SVG."""

    left: float
    top: float
    width: float
    height: float

    @property
    def right(self) -> float:
        return self.left + self.width

    @property
    def bottom(self) -> float:
        return self.top + self.height


class Scale(Protocol):
    def __call__(self, value: float) -> float: ...

    def ticks(self) -> list[float]: ...


@dataclass(frozen=True)
class LinearScale:
    lo: float
    hi: float
    start: float
    end: float
    step: float

    def __call__(self, value: float) -> float:
        return self.start + (value - self.lo) / (self.hi - self.lo) * (self.end - self.start)

    def ticks(self) -> list[float]:
        count = round((self.hi - self.lo) / self.step)
        first = math.ceil(self.lo / self.step - 1e-9)
        return [
            (first + i) * self.step
            for i in range(count + 1)
            if (first + i) * self.step <= self.hi + 1e-9 * self.step
        ]


@dataclass(frozen=True)
class LogScale:
    lo: float
    hi: float
    start: float
    end: float

    def __call__(self, value: float) -> float:
        ratio = (math.log10(max(value, self.lo)) - math.log10(self.lo)) / (
            math.log10(self.hi) - math.log10(self.lo)
        )
        return self.start + ratio * (self.end - self.start)

    def ticks(self) -> list[float]:
        decades = range(round(math.log10(self.lo)), round(math.log10(self.hi)) + 1)
        # With few decades, 2 and 5 between them keep the axis readable.
        steps = (1, 2, 5) if len(decades) <= 4 else (1,)
        out = [m * 10.0**d for d in decades for m in steps]
        return [t for t in out if self.lo <= t <= self.hi * (1 + 1e-9)]


def nice_step(span: float, target: int = 5) -> float:
    """A round tick step (1, 2, 2.5 or 5 times a power of ten) giving about
    ``target`` intervals over ``span``."""
    if span <= 0:
        return 1.0
    raw = span / target
    power = 10.0 ** math.floor(math.log10(raw))
    for mult in (1.0, 2.0, 2.5, 5.0, 10.0):
        if raw <= mult * power * (1 + 1e-9):
            return mult * power
    return 10.0 * power


def linear(lo: float, hi: float, start: float, end: float, *, extend: bool) -> LinearScale:
    """A scale over [lo, hi]; ``extend`` rounds the top up to the next tick,
    as value axes should; time axes keep their exact span."""
    if hi <= lo:
        hi = lo + 1.0
    step = nice_step(hi - lo)
    if extend:
        hi = math.ceil(hi / step - 1e-9) * step
    return LinearScale(lo, hi, start, end, step)


def value_scale(values: Sequence[float], start: float, end: float, *, log: bool) -> Scale:
    top = max(values, default=0.0)
    if log:
        positive = [v for v in values if v > 0]
        lo = 10.0 ** math.floor(math.log10(min(positive, default=1.0)))
        hi = 10.0 ** math.ceil(math.log10(max(top, lo * 10)))
        return LogScale(lo, hi, start, end)
    return linear(0.0, top if top > 0 else 1.0, start, end, extend=True)


def wants_log(values: Sequence[float]) -> bool:
    """Latencies spanning more than two decades read better on a log axis."""
    positive = [v for v in values if v > 0]
    return bool(positive) and max(positive) / min(positive) > 100


def fmt(value: float, step: float | None = None) -> str:
    """A number with as many decimals as ``step`` (or the value) needs."""
    ref = abs(step if step else value)
    decimals = 0
    while decimals < 4 and abs(ref * 10**decimals - round(ref * 10**decimals)) > 1e-6:
        decimals += 1
    if step is None:
        decimals = min(decimals, 0 if ref >= 100 else 1 if ref >= 10 else 2)
    return f"{value:,.{decimals}f}"


def _n(value: float) -> str:
    """A coordinate, short."""
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _text(x: float, y: float, text: str, *, anchor: str = "start", extra: str = "") -> str:
    return f'<text x="{_n(x)}" y="{_n(y)}" text-anchor="{anchor}"{extra}>{escape(text)}</text>'


def _title(text: str) -> str:
    return f"<title>{escape(text)}</title>" if text else ""


@dataclass(frozen=True)
class LegendItem:
    name: str
    color: str
    style: str = "box"  # box, line, dashed or marker


@dataclass(frozen=True)
class Legend:
    items: Sequence[LegendItem]
    # Legends start at the plot's left edge, up to ~100 px in: wrap before the right one.
    width: float = WIDTH - 116
    row_px: float = 18

    def rows(self) -> list[list[tuple[float, LegendItem]]]:
        """Items placed left to right, wrapping when a row is full."""
        rows: list[list[tuple[float, LegendItem]]] = [[]]
        x = 0.0
        for item in self.items:
            w = 22 + len(item.name) * CHAR_PX + 14
            if rows[-1] and x + w > self.width:
                rows.append([])
                x = 0.0
            rows[-1].append((x, item))
            x += w
        return rows if self.items else []

    @property
    def height(self) -> float:
        return len(self.rows()) * self.row_px

    def draw(self, left: float, top: float) -> str:
        out = ['<g class="legend">']
        for r, row in enumerate(self.rows()):
            y = top + r * self.row_px + self.row_px / 2
            for x, item in row:
                out.append(_swatch(left + x, y, item))
                out.append(_text(left + x + 22, y + 4, item.name))
        out.append("</g>")
        return "".join(out)


def _swatch(x: float, y: float, item: LegendItem) -> str:
    if item.style == "box":
        return (
            f'<rect class="swatch" x="{_n(x)}" y="{_n(y - 5)}" width="16" height="10" '
            f'rx="2" fill="{item.color}"/>'
        )
    if item.style == "marker":
        return f'<circle cx="{_n(x + 8)}" cy="{_n(y)}" r="4" fill="{item.color}"/>'
    dash = ' stroke-dasharray="4 3"' if item.style == "dashed" else ""
    return (
        f'<path d="M{_n(x)} {_n(y)}h16" stroke="{item.color}" stroke-width="2"{dash} fill="none"/>'
    )


def _svg(height: float, body: Sequence[str], label: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {_n(height)}" '
        f'role="img" aria-label="{escape(label)}" font-size="{FONT_PX}" fill="{TEXT}">'
        + "".join(body)
        + "</svg>"
    )


def _y_axis(frame: Frame, scale: Scale, label: str) -> str:
    out = []
    step = scale.step if isinstance(scale, LinearScale) else None
    for tick in scale.ticks():
        y = scale(tick)
        out.append(
            f'<path d="M{_n(frame.left)} {_n(y)}H{_n(frame.right)}" stroke="{GRID}" class="grid"/>'
        )
        out.append(_text(frame.left - 6, y + 4, fmt(tick, step), anchor="end"))
    middle = frame.top + frame.height / 2
    out.append(
        _text(12, middle, label, anchor="middle", extra=f' transform="rotate(-90 12 {_n(middle)})"')
    )
    out.append(f'<path d="M{_n(frame.left)} {_n(frame.top)}V{_n(frame.bottom)}" stroke="{AXIS}"/>')
    return "".join(out)


def _x_axis(frame: Frame, scale: LinearScale, label: str) -> str:
    out = [f'<path d="M{_n(frame.left)} {_n(frame.bottom)}H{_n(frame.right)}" stroke="{AXIS}"/>']
    for tick in scale.ticks():
        x = scale(tick)
        out.append(f'<path d="M{_n(x)} {_n(frame.bottom)}v4" stroke="{AXIS}"/>')
        out.append(_text(x, frame.bottom + 16, fmt(tick, scale.step), anchor="middle"))
    out.append(_text(frame.left + frame.width / 2, frame.bottom + 34, label, anchor="middle"))
    return "".join(out)


def _left_margin(scale: Scale) -> float:
    """Room for the widest y tick label and the rotated axis title."""
    step = scale.step if isinstance(scale, LinearScale) else None
    widest = max((len(fmt(t, step)) for t in scale.ticks()), default=1)
    return 30 + widest * CHAR_PX


@dataclass(frozen=True)
class Layout:
    """Vertical budget shared by the charts with axes."""

    legend: Legend
    plot_px: float = 200
    bottom_px: float = 44

    @property
    def top(self) -> float:
        return 6 + self.legend.height + (8 if self.legend.items else 4)

    @property
    def height(self) -> float:
        return self.top + self.plot_px + self.bottom_px


def _polyline(points: Sequence[tuple[float, float]], line: Line) -> str:
    # Dashed lines are the secondary ones (a plan, a max): thinner, so the rest reads.
    dash = ' stroke-dasharray="5 4" stroke-opacity="0.75"' if line.dashed else ""
    width = 1.3 if line.dashed else 1.8
    if len(points) == 1:
        x, y = points[0]
        return f'<circle class="mark" cx="{_n(x)}" cy="{_n(y)}" r="2.5" fill="{line.color}"/>'
    coords = " ".join(f"{_n(x)},{_n(y)}" for x, y in points)
    return (
        f'<polyline class="mark" points="{coords}" fill="none" stroke="{line.color}" '
        f'stroke-width="{width}" stroke-linejoin="round"{dash}/>'
    )


def _segments(
    line: Line, xs: Sequence[tuple[float, float]], y_scale: Scale
) -> list[list[tuple[float, float]]]:
    """Runs of consecutive values; a None breaks the line. ``xs`` holds each
    value's interval (start, end) in pixels."""
    runs: list[list[tuple[float, float]]] = [[]]
    for (x0, x1), y in zip(xs, line.ys, strict=False):
        if y is None:
            runs.append([])
            continue
        py = y_scale(y)
        runs[-1] += [(x0, py), (x1, py)] if line.step else [((x0 + x1) / 2, py)]
    return [r for r in runs if r]


def _draw_line(line: Line, xs: Sequence[tuple[float, float]], y_scale: Scale) -> str:
    out = []
    if line.connect:
        out += [_polyline(run, line) for run in _segments(line, xs, y_scale)]
    if line.markers:
        for i, ((x0, x1), y) in enumerate(zip(xs, line.ys, strict=False)):
            if y is None:
                continue
            note = line.marker_notes[i] if i < len(line.marker_notes) else ""
            out.append(
                f'<circle class="mark" cx="{_n((x0 + x1) / 2)}" cy="{_n(y_scale(y))}" r="4" '
                f'fill="{line.color}" stroke="#fff" stroke-width="1">{_title(note)}</circle>'
            )
    return "".join(out)


def _hover(frame: Frame, spans: Sequence[tuple[float, float]], notes: Sequence[str]) -> str:
    if not notes or len(notes) > MAX_HOVER:
        return ""
    return "".join(
        f'<rect class="hover" x="{_n(x0)}" y="{_n(frame.top)}" width="{_n(max(x1 - x0, 0.5))}" '
        f'height="{_n(frame.height)}" fill="#000" fill-opacity="0">{_title(note)}</rect>'
        for (x0, x1), note in zip(spans, notes, strict=False)
    )


def _line_legend(lines: Sequence[Line]) -> list[LegendItem]:
    def style(line: Line) -> str:
        if not line.connect:
            return "marker"
        return "dashed" if line.dashed else "line"

    return [LegendItem(line.name, line.color, style(line)) for line in lines]


def _line_values(lines: Sequence[Line]) -> list[float]:
    return [y for line in lines for y in line.ys if y is not None]


def time_chart(
    *,
    intervals: int,
    interval_s: float,
    y_label: str,
    layers: Sequence[Layer] = (),
    lines: Sequence[Line] = (),
    hover: Sequence[str] = (),
    log_y: bool = False,
    x_label: str = "time since the start (s)",
) -> str:
    """Stacked columns and lines over ``intervals`` intervals of ``interval_s``
    seconds each; every series holds one value per interval."""
    legend = Legend([LegendItem(la.name, la.color) for la in layers] + _line_legend(lines))
    layout = Layout(legend)
    stacked = [sum(la.values[i] for la in layers if i < len(la.values)) for i in range(intervals)]
    y_values = stacked + _line_values(lines)
    left = _left_margin(value_scale(y_values, 1.0, 0.0, log=log_y))
    frame = Frame(left, layout.top, WIDTH - left - 16, layout.plot_px)
    y_scale = value_scale(y_values, frame.bottom, frame.top, log=log_y)
    span = intervals * interval_s
    x_scale = linear(0.0, span, frame.left, frame.right, extend=False)
    spans = [
        (x_scale(i * interval_s), x_scale(min((i + 1) * interval_s, span)))
        for i in range(intervals)
    ]
    body = [
        legend.draw(frame.left, 6),
        _y_axis(frame, y_scale, y_label),
        _columns(layers, spans, y_scale),
        # The first lines drawn last, on top: callers list the most important first.
        *(_draw_line(line, spans, y_scale) for line in reversed(lines)),
        _x_axis(frame, x_scale, x_label),
        _hover(frame, spans, hover),
    ]
    return _svg(layout.height, body, y_label)


def _columns(layers: Sequence[Layer], spans: Sequence[tuple[float, float]], y_scale: Scale) -> str:
    out = []
    gap = 0.15 if len(spans) <= 120 else 0.0
    for i, (x0, x1) in enumerate(spans):
        base = 0.0
        inset = (x1 - x0) * gap / 2
        for layer in layers:
            value = layer.values[i] if i < len(layer.values) else 0.0
            if value <= 0:
                continue
            top, bottom = y_scale(base + value), y_scale(base)
            out.append(
                f'<rect class="mark" x="{_n(x0 + inset)}" y="{_n(top)}" '
                f'width="{_n(max(x1 - x0 - 2 * inset, 0.6))}" height="{_n(bottom - top)}" '
                f'fill="{layer.color}" shape-rendering="crispEdges"/>'
            )
            base += value
    return "".join(out)


def xy_chart(
    *,
    xs: Sequence[float],
    lines: Sequence[Line],
    x_label: str,
    y_label: str,
    marks: Sequence[Mark] = (),
) -> str:
    """Lines over numeric ``xs`` (each line holds a value per x), with labelled
    vertical reference marks."""
    legend = Legend(_line_legend(lines) + [LegendItem(m.label, m.color, "dashed") for m in marks])
    layout = Layout(legend, plot_px=170)
    y_values = _line_values(lines)
    # At least a fixed margin, so charts shown side by side line up.
    left = max(72.0, _left_margin(value_scale(y_values, 1.0, 0.0, log=False)))
    frame = Frame(left, layout.top, WIDTH - left - 24, layout.plot_px)
    y_scale = value_scale(y_values, frame.bottom, frame.top, log=False)
    # Headroom, so a point at the highest x is not cut by the frame.
    top_x = 1.05 * max([*xs, *(m.x for m in marks)], default=1.0)
    x_scale = linear(0.0, top_x, frame.left, frame.right, extend=True)
    points = [(x_scale(x), x_scale(x)) for x in xs]
    body = [
        legend.draw(frame.left, 6),
        _y_axis(frame, y_scale, y_label),
        _x_axis(frame, x_scale, x_label),
        *(_mark(frame, x_scale(m.x), m) for m in marks),
        *(_draw_line(line, points, y_scale) for line in lines),
    ]
    return _svg(layout.height, body, y_label)


def _mark(frame: Frame, x: float, mark: Mark) -> str:
    return (
        f'<path d="M{_n(x)} {_n(frame.top)}V{_n(frame.bottom)}" stroke="{mark.color}" '
        f'stroke-dasharray="4 3" stroke-width="1.5">{_title(mark.label)}</path>'
    )


def hbars(*, bars: Sequence[Bar], x_label: str) -> str:
    """One horizontal bar per category, its value and note written after it."""
    label_px = 14 + max((len(b.label) for b in bars), default=1) * CHAR_PX
    note_px = 14 + max((len(_bar_text(b)) for b in bars), default=1) * CHAR_PX
    row = 26
    legend = Legend([LegendItem(b.label, b.color) for b in bars])
    top = 6 + legend.height + 8
    frame = Frame(label_px, top, WIDTH - label_px - note_px, row * len(bars))
    x_scale = linear(
        0.0, max((b.value for b in bars), default=1.0), frame.left, frame.right, extend=True
    )
    body = [legend.draw(frame.left, 6), _x_axis(frame, x_scale, x_label)]
    for i, bar in enumerate(bars):
        y = frame.top + i * row
        width = x_scale(bar.value) - frame.left
        body.append(_text(frame.left - 8, y + row / 2 + 4, bar.label, anchor="end"))
        body.append(
            f'<rect class="mark" x="{_n(frame.left)}" y="{_n(y + 4)}" width="{_n(max(width, 1))}" '
            f'height="{row - 8}" rx="2" fill="{bar.color}">'
            f"{_title(f'{bar.label}: {_bar_text(bar)}')}</rect>"
        )
        body.append(_text(frame.left + width + 6, y + row / 2 + 4, _bar_text(bar)))
    return _svg(frame.bottom + 44, body, x_label)


def _bar_text(bar: Bar) -> str:
    return fmt(bar.value) + (f" {bar.note}" if bar.note else "")


def columns(*, bars: Sequence[Bar], series: str, x_label: str, y_label: str) -> str:
    """One vertical bar per category, left to right, its value above it; the
    legend names the ``series`` the bars show."""
    legend = Legend([LegendItem(series, bars[0].color)] if bars else [])
    layout = Layout(legend, plot_px=180)
    left = _left_margin(value_scale([b.value for b in bars], 1.0, 0.0, log=False))
    frame = Frame(left, layout.top + 14, WIDTH - left - 16, layout.plot_px)
    y_scale = value_scale([b.value for b in bars], frame.bottom, frame.top, log=False)
    slot = frame.width / max(len(bars), 1)
    body = [legend.draw(frame.left, 6), _y_axis(frame, y_scale, y_label)]
    body.append(
        f'<path d="M{_n(frame.left)} {_n(frame.bottom)}H{_n(frame.right)}" stroke="{AXIS}"/>'
    )
    for i, bar in enumerate(bars):
        x = frame.left + i * slot
        top = y_scale(bar.value)
        inset = slot * 0.15
        body.append(_text(x + slot / 2, frame.bottom + 16, bar.label, anchor="middle"))
        if not bar.value:
            continue
        body.append(_text(x + slot / 2, top - 5, fmt(bar.value), anchor="middle"))
        body.append(
            f'<rect class="mark" x="{_n(x + inset)}" y="{_n(top)}" width="{_n(slot - 2 * inset)}" '
            f'height="{_n(max(frame.bottom - top, 0.5))}" fill="{bar.color}">'
            f"{_title(f'{bar.label}: {_bar_text(bar)}')}</rect>"
        )
    body.append(_text(frame.left + frame.width / 2, frame.bottom + 34, x_label, anchor="middle"))
    return _svg(frame.bottom + 44, body, y_label)


def stacked_hbar(*, parts: Sequence[Bar], x_label: str) -> str:
    """Parts of one whole as segments of a single bar, left to right."""
    legend = Legend([LegendItem(p.label, p.color) for p in parts])
    top = 6 + legend.height + 10
    frame = Frame(16, top, WIDTH - 40, 40)
    total = sum(p.value for p in parts)
    x_scale = linear(0.0, total if total > 0 else 1.0, frame.left, frame.right, extend=True)
    body = [legend.draw(frame.left, 6), _x_axis(frame, x_scale, x_label)]
    start = 0.0
    for part in parts:
        x0, x1 = x_scale(start), x_scale(start + part.value)
        start += part.value
        if part.value <= 0:
            continue
        body.append(
            f'<rect class="mark" x="{_n(x0)}" y="{_n(frame.top)}" width="{_n(max(x1 - x0, 0.8))}" '
            f'height="{_n(frame.height)}" fill="{part.color}" stroke="#fff" stroke-width="1">'
            f"{_title(f'{part.label}: {_bar_text(part)}')}</rect>"
        )
        text = fmt(part.value)
        if (x1 - x0) > len(text) * CHAR_PX + 8:
            body.append(
                _text((x0 + x1) / 2, frame.top + 24, text, anchor="middle", extra=' fill="#212529"')
            )
    return _svg(frame.bottom + 44, body, x_label)
