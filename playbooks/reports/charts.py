"""The HTML report's charts: drawn by matplotlib, embedded as inline SVG.

Two charts per finding:

- the timeline, to scale, of the mail, the click, the device code sign-in and
  the rows of its flow, and what tokenward planned at the run's clock; when
  the run came long after the events, the axis is broken and says by how much;
- the score, signal by signal, under a 0–100 gauge with the tier thresholds.

The SVG is made to live inside one HTML page: ids are prefixed per chart (so
two charts never share one), matplotlib's metadata and global stylesheet are
dropped, and every mark and bar carries ``class`` and ``data-*`` attributes
naming what it shows, plus a ``<title>`` a browser shows on hover. Text stays
text (``svg.fonttype: none``), so it is selectable and searchable.

Everything drawn here comes from logs an attacker may have written (subjects,
URLs, user agents): text is passed with ``parse_math=False`` so a ``$`` is
never read as a formula, and matplotlib escapes it into the SVG.
"""

from __future__ import annotations

import io
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import matplotlib
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from matplotlib.text import Text
from matplotlib.ticker import FuncFormatter, Locator, MaxNLocator

from playbooks.models import ActionStatus, Reason
from playbooks.reports import SignalGroup, signal_group, signal_label
from playbooks.reports.timeline import Lane, Mark, Timeline, offset_text
from playbooks.times import isoformat_z
from playbooks.whatif import Thresholds

SVG_NS = "http://www.w3.org/2000/svg"
XLINK_NS = "http://www.w3.org/1999/xlink"
ET.register_namespace("", SVG_NS)
ET.register_namespace("xlink", XLINK_NS)

# The page's palette (kept in step with report.css).
INK = "#0f172a"
MUTED = "#64748b"
FAINT = "#e2e8f0"
LANE_FILL = "#f8fafc"
GROUP_COLOURS = {
    SignalGroup.LURE: "#d97706",
    SignalGroup.SIGN_IN: "#b91c1c",
    SignalGroup.HISTORY: "#7c3aed",
    SignalGroup.LOWERS: "#059669",
    SignalGroup.OTHER: "#64748b",
}
TIER_FILLS = {"low": "#dcfce7", "medium": "#fef3c7", "high": "#fee2e2"}
TIER_INK = {"low": "#166534", "medium": "#92400e", "high": "#991b1b"}

_LANES = (Lane.MAIL, Lane.CLICK, Lane.SIGN_IN, Lane.TOKEN_USE, Lane.TOKENWARD)
_STYLE = {
    # kind: (marker, face colour, edge colour, size)
    "lure_email": ("s", "#b45309", "#b45309", 9),
    "email": ("s", "#ffffff", "#b45309", 9),
    "click": ("D", "#f59e0b", "#b45309", 8),
    "click_blocked": ("D", "#ffffff", "#b45309", 8),
    "device_code": ("o", "#b91c1c", "#7f1d1d", 11),
    "device_code_failed": ("o", "#ffffff", "#b91c1c", 10),
    "interrupt": ("o", "#ffffff", "#b91c1c", 8),
    "token_use": ("o", "#f87171", "#b91c1c", 7),
    "run": ("h", "#ffffff", "#1d4ed8", 9),
}
_ACTION_STYLE = {
    ActionStatus.WOULD_SEND: ("h", "#1d4ed8", "#1e3a8a", 9),
    ActionStatus.SUCCEEDED: ("h", "#1d4ed8", "#1e3a8a", 9),
    ActionStatus.AWAITING_APPROVAL: ("h", "#ffffff", "#1d4ed8", 9),
    ActionStatus.BLOCKED: ("X", "#94a3b8", "#475569", 8),
}
_RC: dict[Any, Any] = {
    "svg.fonttype": "none",
    "font.family": ["DejaVu Sans", "sans-serif"],
    "font.size": 9.5,
    "axes.linewidth": 0.8,
    "axes.edgecolor": "#94a3b8",
    "xtick.color": MUTED,
    "ytick.color": MUTED,
    "xtick.labelsize": 8.5,
    "ytick.labelsize": 9.5,
}

LANE_HEIGHT = 0.74  # inches: a title and two lines of detail
ACTION_STEP = 0.24  # inches between stacked actions
WIDTH = 9.4  # inches: 902 px, the report card's width, so text is drawn 1:1


@dataclass
class _Svg:
    """A figure being drawn, and what to say about its elements in the SVG."""

    chart_id: str
    figure: Figure
    canvas: FigureCanvasAgg
    # gid -> attributes for the element matplotlib writes with that id.
    annotations: dict[str, dict[str, str]] = field(default_factory=dict)
    # gid -> hover text.
    titles: dict[str, str] = field(default_factory=dict)
    serial: int = 0

    def gid(self, kind: str, attributes: dict[str, str], title: str = "") -> str:
        self.serial += 1
        name = f"{kind}-{self.serial}"
        self.annotations[name] = attributes
        if title:
            self.titles[name] = title
        return name


@contextmanager
def _drawing(chart_id: str, height: float) -> Iterator[_Svg]:
    with matplotlib.rc_context({**_RC, "svg.hashsalt": chart_id}):
        figure = Figure(figsize=(WIDTH, height), dpi=72)
        canvas = FigureCanvasAgg(figure)
        yield _Svg(chart_id=chart_id, figure=figure, canvas=canvas)


# -- the timeline ----------------------------------------------------------


@dataclass(frozen=True)
class _Segment:
    """A stretch of the time axis, in minutes from the sign-in."""

    start: float
    end: float


def timeline_svg(
    timeline: Timeline,
    *,
    chart_id: str,
    title: str,
    searched: tuple[timedelta, timedelta] | None = None,
) -> str:
    """The finding's timeline, to scale, as an SVG element for an HTML page.

    *searched* is the correlation window (before, after the sign-in), which an
    empty mail or click lane names.
    """
    actions = timeline.lane(Lane.TOKENWARD)
    # The token-use lane only when the flow has such rows.
    lanes = [lane for lane in _LANES if lane is not Lane.TOKEN_USE or timeline.lane(lane)]
    heights = {lane: LANE_HEIGHT for lane in lanes}
    heights[Lane.TOKENWARD] = max(LANE_HEIGHT, ACTION_STEP * len(actions) + 0.3)
    top, bottom, left, right = 0.42, 0.5, 1.05, 0.25
    height = top + sum(heights.values()) + bottom

    # Lanes from the top: each one's centre, in inches from the bottom axis.
    centres: dict[Lane, float] = {}
    edge = sum(heights.values())
    for lane in lanes:
        centres[lane] = edge - heights[lane] / 2
        edge -= heights[lane]

    segments = _segments(timeline)
    with _drawing(chart_id, height) as svg:
        figure = svg.figure
        widths = [segment.end - segment.start for segment in segments]
        usable = (WIDTH - left - right - (0.3 if len(segments) > 1 else 0)) / WIDTH
        axes: list[Axes] = []
        x = left / WIDTH
        for index, segment in enumerate(segments):
            share = widths[index] / sum(widths) if len(segments) == 1 else (0.8, 0.2)[index]
            ax = figure.add_axes(
                (x, bottom / height, usable * share, sum(heights.values()) / height)
            )
            x += usable * share + 0.3 / WIDTH
            ax.set_xlim(segment.start, segment.end)
            ax.set_ylim(0, sum(heights.values()))
            axes.append(ax)

        for index, ax in enumerate(axes):
            _lanes(ax, lanes, heights, centres, first=index == 0)
            _time_axis(ax, segments[index])
        if len(axes) > 1:
            _break(axes, segments, timeline)
        _exposure(axes, segments, timeline)
        _sign_in_line(axes, segments, timeline)

        for lane in lanes:
            marks = timeline.lane(lane)
            if not marks and lane.empty_note:
                note = lane.empty_note
                if searched is not None:
                    before, after = (offset_text(value).lstrip("+") for value in searched)
                    what = note.split(" around")[0]
                    note = f"{what} from {before} before to {after} after the sign-in"
                axes[0].text(
                    0.5,
                    centres[lane],
                    note,
                    transform=axes[0].get_yaxis_transform(),
                    va="center",
                    ha="center",
                    fontsize=8.5,
                    style="italic",
                    color=MUTED,
                    parse_math=False,
                    bbox={
                        "boxstyle": "round,pad=0.3",
                        "facecolor": "white",
                        "edgecolor": FAINT,
                        "linewidth": 0.6,
                    },
                    zorder=6,
                )
            if lane is Lane.TOKENWARD:
                _action_marks(svg, axes, segments, marks, centres[lane])
            else:
                _event_marks(svg, axes, segments, marks, centres[lane])
        return _inline(svg, title=title)


def _segments(timeline: Timeline) -> list[_Segment]:
    """One stretch for the whole story, or two when the run came much later."""
    minutes = [_minutes(mark.offset) for mark in timeline.marks]
    events = [_minutes(m.offset) for m in timeline.marks if m.lane is not Lane.TOKENWARD] + [0.0]
    runs = [_minutes(m.offset) for m in timeline.marks if m.lane is Lane.TOKENWARD]
    first, last = min(events), max(events)
    span = last - first
    run = max(runs) if runs else last
    if run - last > max(4 * span, 30.0):
        pad = max(span * 0.08, 1.0)
        run_pad = max(pad, 1.0)
        return [
            _Segment(first - pad, last + pad * 1.5),
            _Segment(run - run_pad, run + run_pad),
        ]
    low, high = min(minutes + [0.0]), max(minutes + [0.0])
    pad = max((high - low) * 0.06, 1.0)
    return [_Segment(low - pad, high + pad)]


def _lanes(
    ax: Axes,
    lanes: Sequence[Lane],
    heights: dict[Lane, float],
    centres: dict[Lane, float],
    *,
    first: bool,
) -> None:
    edge = sum(heights.values())
    for index, lane in enumerate(lanes):
        low = edge - heights[lane]
        if index % 2 == 0:
            ax.axhspan(low, edge, color=LANE_FILL, zorder=0, linewidth=0)
        ax.axhline(low, color=FAINT, linewidth=0.8, zorder=1)
        edge = low
    ax.set_yticks([centres[lane] for lane in lanes])
    if first:
        ax.set_yticklabels([lane.heading for lane in lanes], fontweight="bold", color="#334155")
    else:
        ax.set_yticklabels([])
    ax.tick_params(axis="y", length=0, pad=10)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)


class _OffsetLocator(Locator):
    """Round ticks in the unit the span reads best in: minutes, hours or days."""

    def __init__(self, scale: float) -> None:
        self.scale = scale
        self.inner = MaxNLocator(nbins=9, steps=[1, 2, 5, 10])

    def __call__(self) -> Any:
        low, high = self.axis.get_view_interval() if self.axis else (0.0, 1.0)
        return self.tick_values(low, high)

    def tick_values(self, vmin: float, vmax: float) -> Any:
        ticks = self.inner.tick_values(vmin / self.scale, vmax / self.scale)
        return [tick * self.scale for tick in ticks]


def _tick_text(minutes: float, _position: object = None) -> str:
    seconds = round(minutes * 60)
    if seconds % 60:
        return f"{'−' if seconds < 0 else '+'}{abs(seconds)} s"
    return offset_text(timedelta(seconds=seconds))


def _time_axis(ax: Axes, segment: _Segment) -> None:
    span = segment.end - segment.start
    scale = 1.0 if span <= 240 else 60.0 if span <= 72 * 60 else 1440.0
    ax.xaxis.set_major_locator(_OffsetLocator(scale))
    ax.xaxis.set_major_formatter(FuncFormatter(_tick_text))
    ax.grid(axis="x", color=FAINT, linewidth=0.6, zorder=0.5)
    ax.tick_params(axis="x", length=3, color="#94a3b8")


def _break(axes: list[Axes], segments: list[_Segment], timeline: Timeline) -> None:
    """Two stretches of one axis: say it is broken, and by how much."""
    left, right = axes
    left.spines["right"].set_visible(False)
    right.spines["left"].set_visible(False)
    # The right side is the run alone: one tick, at its clock.
    runs = [_minutes(m.offset) for m in timeline.marks if m.lane is Lane.TOKENWARD]
    run = max(runs) if runs else segments[1].end
    right.set_xticks([run])
    right.xaxis.set_major_formatter(FuncFormatter(_tick_text))
    for ax, x in ((left, 1.0), (right, 0.0)):
        ax.plot(
            [x - 0.006 * (1 if x else -1), x + 0.006 * (1 if x else -1)],
            [-0.02, 0.02],
            transform=ax.transAxes,
            color="#94a3b8",
            clip_on=False,
            linewidth=1,
        )
    gap = timedelta(minutes=segments[1].start - segments[0].end)
    figure = left.figure
    middle = (left.get_position().x1 + right.get_position().x0) / 2
    below = 20 / figure.bbox.height  # 20 points below the axis, as a fraction
    figure.text(
        middle,
        left.get_position().y0 - below,
        f"axis broken here: {offset_text(gap).lstrip('+')} left out",
        ha="center",
        va="top",
        fontsize=7.8,
        color=MUTED,
        style="italic",
        parse_math=False,
    )


def _exposure(axes: list[Axes], segments: list[_Segment], timeline: Timeline) -> None:
    """Shade the time from the sign-in to the run, and say how long it was."""
    runs = [m for m in timeline.marks if m.lane is Lane.TOKENWARD]
    if not runs or _minutes(runs[0].offset) <= 0:
        return
    end = _minutes(runs[0].offset)
    if timeline.exposed:
        for ax, segment in zip(axes, segments, strict=True):
            low, high = max(0.0, segment.start), min(end, segment.end)
            if low < high:
                ax.axvspan(low, high, color="#fee2e2", alpha=0.45, zorder=0.2, linewidth=0)
    words = f"{offset_text(runs[0].offset).lstrip('+')} from the sign-in to tokenward's run"
    if timeline.exposed:
        words += ": the token's holder had this long"
    ax = axes[-1]
    ax.annotate(
        words,
        xy=(1.0, 1.0),
        xycoords="axes fraction",
        xytext=(0, 3),
        textcoords="offset points",
        ha="right",
        va="bottom",
        fontsize=8,
        color="#991b1b" if timeline.exposed else MUTED,
        parse_math=False,
        annotation_clip=False,
    )


def _sign_in_line(axes: list[Axes], segments: list[_Segment], timeline: Timeline) -> None:
    ax = axes[0]
    ax.axvline(0, color=INK, linewidth=1, linestyle=(0, (3, 2)), zorder=2)
    ax.annotate(
        f"sign-in {isoformat_z(timeline.anchor)[11:19]} UTC",
        xy=(0, 1.0),
        xycoords=("data", "axes fraction"),
        xytext=(0, 3),
        textcoords="offset points",
        ha="center",
        va="bottom",
        fontsize=8,
        fontweight="bold",
        color=INK,
        parse_math=False,
        annotation_clip=False,
    )


def _event_marks(
    svg: _Svg,
    axes: list[Axes],
    segments: list[_Segment],
    marks: Sequence[Mark],
    y: float,
) -> None:
    """Mail, click and sign-in marks, labelled; close marks share one label."""
    clusters: list[list[Mark]] = []
    label_end = -1e9
    for mark in marks:
        ax = _axis_for(axes, segments, mark)
        x_px = ax.transData.transform((_minutes(mark.offset), y))[0]
        if clusters and x_px < label_end + 8:
            clusters[-1].append(mark)
        else:
            clusters.append([mark])
        # A cluster's label starts after its last mark.
        title, detail = _cluster_label(clusters[-1])
        label_end = x_px + _label_width(svg, title, detail) + 10

    for mark in marks:
        ax = _axis_for(axes, segments, mark)
        marker, face, edge, size = _STYLE.get(mark.kind, ("o", "#ffffff", INK, 8))
        gid = svg.gid(
            "mark",
            {
                "class": f"tw-mark tw-lane-{mark.lane.value} tw-kind-{mark.kind}",
                "data-lane": mark.lane.value,
                "data-kind": mark.kind,
                "data-time": isoformat_z(mark.time),
                "data-offset-seconds": str(round(mark.offset.total_seconds())),
            },
            f"{mark.title} · {isoformat_z(mark.time)} ({mark.offset_text})\n" + mark.detail,
        )
        ax.plot(
            [_minutes(mark.offset)],
            [y],
            marker=marker,
            markersize=size,
            markerfacecolor=face,
            markeredgecolor=edge,
            markeredgewidth=1.4,
            linestyle="none",
            zorder=5 if mark.primary else 4,
            clip_on=False,
            gid=gid,
        )

    for cluster in clusters:
        last = cluster[-1]
        ax = _axis_for(axes, segments, last)
        title, detail = _cluster_label(cluster)
        bold = any(mark.primary for mark in cluster)
        _label(
            svg,
            ax,
            _minutes(last.offset),
            y,
            title,
            _clip_lines(detail),
            bold=bold,
            first=_minutes(cluster[0].offset),
        )


def _cluster_label(cluster: Sequence[Mark]) -> tuple[str, str]:
    """One label for marks too close to label apart: what they are, together."""
    first = cluster[0]
    if len(cluster) == 1:
        return first.title, first.detail
    span = f"{first.offset_text} to {cluster[-1].offset_text}"
    titles = list(dict.fromkeys(mark.title for mark in cluster))
    if len(titles) == 1:
        # The same event again and again: say how often and about what.
        subjects = list(dict.fromkeys(mark.subject for mark in cluster if mark.subject))
        places = {mark.detail.split("\n")[0].partition(" from ")[2] for mark in cluster}
        detail = ", ".join(subjects) or first.detail.split("\n")[0]
        if len(places) == 1 and next(iter(places)):
            detail += f"\nfrom {next(iter(places))}"
        return f"{first.title} {len(cluster)}× ({span})", detail
    lead = next((mark for mark in cluster if mark.primary), cluster[-1])
    if len(titles) <= 3:
        return " → ".join(titles), lead.detail
    return f"{len(cluster)} events ({span})", lead.detail


def _action_marks(
    svg: _Svg,
    axes: list[Axes],
    segments: list[_Segment],
    marks: Sequence[Mark],
    y: float,
) -> None:
    """tokenward's planned actions at the run's clock, stacked, one label each."""
    count = len(marks)
    for index, mark in enumerate(marks):
        ax = _axis_for(axes, segments, mark)
        row = y + (((count - 1) / 2) - index) * ACTION_STEP
        style = _ACTION_STYLE.get(mark.status, _STYLE["run"]) if mark.status else _STYLE["run"]
        marker, face, edge, size = style
        gid = svg.gid(
            "mark",
            {
                "class": f"tw-mark tw-lane-{mark.lane.value} tw-kind-{mark.kind}",
                "data-lane": mark.lane.value,
                "data-kind": mark.kind,
                "data-time": isoformat_z(mark.time),
                "data-offset-seconds": str(round(mark.offset.total_seconds())),
                "data-status": mark.status.value if mark.status else "",
            },
            f"{mark.title}: {mark.detail} · {isoformat_z(mark.time)} ({mark.offset_text})",
        )
        ax.plot(
            [_minutes(mark.offset)],
            [row],
            marker=marker,
            markersize=size,
            markerfacecolor=face,
            markeredgecolor=edge,
            markeredgewidth=1.4,
            linestyle="none",
            zorder=4,
            clip_on=False,
            gid=gid,
        )
        _label(svg, ax, _minutes(mark.offset), row, mark.title, mark.detail, inline=True)


def _label(
    svg: _Svg,
    ax: Axes,
    x: float,
    y: float,
    title: str,
    detail: str,
    *,
    bold: bool = False,
    inline: bool = False,
    first: float | None = None,
) -> None:
    """A title and a detail beside a mark (or a cluster from *first* to *x*).

    Right of the mark; left of the cluster's first mark when the right has no
    room; else as far right as fits, so a label never runs off the chart or
    over the lane names.
    """
    width = _label_width(svg, title, detail, inline=inline)
    x_px = ax.transData.transform((x, y))[0]
    first_px = ax.transData.transform((x if first is None else first, y))[0]
    lowest = svg.figure.axes[0].bbox.x0 + 4
    highest = svg.figure.bbox.x1 - 6
    if x_px + 10 + width <= highest:
        shift, align = 10.0, "left"
    elif first_px - 10 - width >= lowest:
        shift, align = first_px - x_px - 10.0, "right"
    else:
        shift, align = max(lowest, highest - width) - x_px, "left"
    # One point is one pixel here (dpi 72), so the shift is in points.
    if inline:
        ax.annotate(
            f"{title} · {detail}",
            xy=(x, y),
            xytext=(shift, 0),
            textcoords="offset points",
            ha=align,
            va="center",
            fontsize=8.5,
            color="#1e3a8a",
            parse_math=False,
            annotation_clip=False,
            zorder=6,
        )
        return
    ax.annotate(
        title,
        xy=(x, y),
        xytext=(shift, 4),
        textcoords="offset points",
        ha=align,
        va="bottom",
        fontsize=9,
        fontweight="bold",
        color=INK if bold else "#1e293b",
        parse_math=False,
        annotation_clip=False,
        zorder=6,
    )
    if detail:
        ax.annotate(
            detail,
            xy=(x, y),
            xytext=(shift, -4),
            textcoords="offset points",
            ha=align,
            va="top",
            fontsize=8.2,
            color="#475569",
            parse_math=False,
            annotation_clip=False,
            zorder=6,
            linespacing=1.25,
        )


def _label_width(svg: _Svg, title: str, detail: str, *, inline: bool = False) -> float:
    texts = [f"{title} · {detail}"] if inline else [title, _clip_lines(detail)]
    widest = 0.0
    for index, value in enumerate(texts):
        probe = Text(
            0,
            0,
            value,
            fontsize=9 if index == 0 and not inline else 8.5,
            fontweight="bold" if index == 0 and not inline else "normal",
            parse_math=False,
            linespacing=1.25,
        )
        probe.set_figure(svg.figure)
        # Measured with the figure's own (Agg) renderer, as drawn.
        widest = max(widest, probe.get_window_extent().width)
    return widest


def _axis_for(axes: list[Axes], segments: list[_Segment], mark: Mark) -> Axes:
    minutes = _minutes(mark.offset)
    for ax, segment in zip(axes, segments, strict=True):
        if segment.start <= minutes <= segment.end:
            return ax
    return axes[-1] if minutes > segments[-1].start else axes[0]


def _minutes(offset: timedelta) -> float:
    return offset.total_seconds() / 60


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _clip_lines(text: str, limit: int = 76) -> str:
    return "\n".join(_clip(line, limit) for line in text.split("\n")[:2])


# -- the score ---------------------------------------------------------------


def score_svg(
    reasons: Sequence[Reason],
    *,
    score: int,
    thresholds: Thresholds | None,
    chart_id: str,
    title: str,
) -> str:
    """The score as a gauge over its signals, one bar per reason, as SVG."""
    count = max(len(reasons), 1)
    bars_height = 0.3 * count
    gauge_height, legend_height, top, bottom = 0.5, 0.45, 0.5, 0.35
    height = top + gauge_height + 0.45 + bars_height + legend_height + bottom
    left, right = 2.35, 0.5

    with _drawing(chart_id, height) as svg:
        figure = svg.figure
        width = (WIDTH - left - right) / WIDTH
        gauge = figure.add_axes(
            (
                (left / WIDTH),
                (height - top - gauge_height) / height,
                width,
                gauge_height / height,
            )
        )
        _gauge(svg, gauge, reasons, score, thresholds)
        bars = figure.add_axes(
            (
                left / WIDTH,
                (bottom + legend_height) / height,
                width,
                bars_height / height,
            )
        )
        _bars(svg, bars, reasons)
        return _inline(svg, title=title)


def _gauge(
    svg: _Svg,
    ax: Axes,
    reasons: Sequence[Reason],
    score: int,
    thresholds: Thresholds | None,
) -> None:
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 1)
    ax.axis("off")
    zones = (
        [
            ("low", 0, thresholds.medium),
            ("medium", thresholds.medium, thresholds.high),
            ("high", thresholds.high, 100),
        ]
        if thresholds is not None
        else [("low", 0, 100)]
    )
    for tier, start, end in zones:
        ax.add_patch(
            Rectangle(
                (start, 0.1),
                end - start,
                0.55,
                facecolor=TIER_FILLS[tier] if thresholds else FAINT,
                edgecolor="white",
                linewidth=1.5,
                zorder=1,
            )
        )
        if thresholds is not None:
            words = f"{tier} ≥ {start}" if start else tier
            ax.text(
                (start + end) / 2,
                0.375,
                words,
                ha="center",
                va="center",
                fontsize=8,
                color=TIER_INK[tier],
                zorder=2,
                parse_math=False,
            )
    gid = svg.gid(
        "gauge",
        {"class": "tw-score-marker", "data-score": str(score)},
        f"score {score}",
    )
    ax.plot(
        [score, score],
        [0.02, 0.73],
        color=INK,
        linewidth=2.2,
        zorder=3,
        gid=gid,
        clip_on=False,
        solid_capstyle="butt",
    )
    ax.text(
        score,
        0.8,
        f"score {score}",
        ha="center" if 8 < score < 92 else ("left" if score <= 8 else "right"),
        va="bottom",
        fontsize=9.5,
        fontweight="bold",
        color=INK,
        parse_math=False,
        clip_on=False,
    )
    ax.text(
        -1.5,
        0.375,
        "Score",
        ha="right",
        va="center",
        fontsize=9,
        fontweight="bold",
        color="#334155",
        parse_math=False,
    )

    total = sum(reason.weight for reason in reasons)
    if total != score:
        bound = "capped at 100" if total > score else "held at 0"
        ax.text(
            100,
            -0.12,
            f"the signals add up to {total:+d}; the score is {bound}",
            ha="right",
            va="top",
            fontsize=7.5,
            color=MUTED,
            style="italic",
            parse_math=False,
            clip_on=False,
        )


def _bars(svg: _Svg, ax: Axes, reasons: Sequence[Reason]) -> None:
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    if not reasons:
        ax.axis("off")
        ax.text(
            0.5,
            0.5,
            "no signal fired",
            ha="center",
            va="center",
            transform=ax.transAxes,
            color=MUTED,
            style="italic",
            parse_math=False,
        )
        return
    weights = [reason.weight for reason in reasons]
    low, high = min(0, *weights), max(0, *weights)
    pad = max((high - low) * 0.08, 2)
    ax.set_xlim(low - (pad if low < 0 else 0), high + pad)
    positions = list(range(len(reasons)))[::-1]
    groups = [signal_group(reason.signal, reason.weight) for reason in reasons]
    container = ax.barh(
        positions,
        weights,
        height=0.64,
        color=[GROUP_COLOURS[g] for g in groups],
        zorder=3,
    )
    for patch, reason, group in zip(container.patches, reasons, groups, strict=True):
        patch.set_gid(
            svg.gid(
                "bar",
                {
                    "class": f"tw-bar tw-group-{group.value}",
                    "data-signal": reason.signal,
                    "data-weight": str(reason.weight),
                },
                f"{signal_label(reason.signal)}: {reason.weight:+d}\n{reason.detail}",
            )
        )
    for position, reason in zip(positions, reasons, strict=True):
        inside = reason.weight >= 0
        ax.text(
            reason.weight + (0.4 if inside else -0.4) * (pad / 2),
            position,
            f"{reason.weight:+d}",
            ha="left" if inside else "right",
            va="center",
            fontsize=8.5,
            fontweight="bold",
            color="#334155",
            parse_math=False,
            zorder=4,
        )
    ax.set_yticks(positions)
    ax.set_yticklabels([signal_label(reason.signal) for reason in reasons])
    ax.tick_params(axis="y", length=0, pad=8)
    ax.set_ylim(-0.6, len(reasons) - 0.4)
    ax.axvline(0, color="#475569", linewidth=1, zorder=4)
    ax.grid(axis="x", color=FAINT, linewidth=0.6, zorder=0)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=8, steps=[1, 2, 5, 10], integer=True))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:+.0f}" if value else "0"))
    ax.set_xlabel("points added to the score", fontsize=8, color=MUTED, labelpad=4)

    present = [group for group in SignalGroup if group in groups]
    totals = {
        group: sum(r.weight for r, g in zip(reasons, groups, strict=True) if g is group)
        for group in present
    }
    handles = [
        Patch(
            facecolor=GROUP_COLOURS[group],
            label=f"{group.heading} ({totals[group]:+d})",
        )
        for group in present
    ]
    legend = ax.figure.legend(
        handles=handles,
        loc="lower left",
        bbox_to_anchor=(0.01, 0.0),
        ncols=len(handles),
        frameon=False,
        fontsize=8.5,
        handlelength=1.0,
        handleheight=0.9,
        columnspacing=1.4,
        labelcolor="#334155",
    )
    for text in legend.get_texts():
        text.set_parse_math(False)


# -- SVG for an HTML page ------------------------------------------------------


_ID_REFERENCE = re.compile(r"url\(#([^)]+)\)")


def _inline(svg: _Svg, *, title: str) -> str:
    """The figure as an ``<svg>`` element to paste into the page."""
    buffer = io.StringIO()
    svg.figure.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    root = ET.fromstring(buffer.getvalue())
    prefix = svg.chart_id + "-"

    # What matplotlib adds for standalone files: metadata and a page-wide style.
    for parent in list(root.iter()):
        for child in list(parent):
            tag = child.tag.split("}")[-1]
            if tag in ("metadata", "style"):
                parent.remove(child)

    # One namespace of ids per chart, references included.
    for element in root.iter():
        identifier = element.get("id")
        if identifier is not None:
            attributes = svg.annotations.get(identifier)
            hover = svg.titles.get(identifier)
            element.set("id", prefix + identifier)
            if attributes:
                for key, value in attributes.items():
                    element.set(key, value)
            if hover:
                note = ET.Element(f"{{{SVG_NS}}}title")
                note.text = hover
                element.insert(0, note)
        for key, value in list(element.attrib.items()):
            if key in ("href", f"{{{XLINK_NS}}}href") and value.startswith("#"):
                element.set(key, "#" + prefix + value[1:])
            elif "url(#" in value:
                element.set(
                    key,
                    _ID_REFERENCE.sub(lambda m: f"url(#{prefix}{m.group(1)})", value),
                )

    # Sized by the page (width 100%), described for screen readers.
    width, height = root.get("width", ""), root.get("height", "")
    for key in ("width", "height"):
        root.attrib.pop(key, None)
    root.set("class", "tw-chart")
    root.set("role", "img")
    root.set("aria-labelledby", prefix + "title")
    root.set("data-natural-size", f"{width} {height}")
    heading = ET.Element(f"{{{SVG_NS}}}title", {"id": prefix + "title"})
    heading.text = title
    root.insert(0, heading)
    return ET.tostring(root, encoding="unicode")
