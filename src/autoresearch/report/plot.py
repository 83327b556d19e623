"""progress.png: the metric of every experiment, the kept ones labelled, the running best and its noise band."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from autoresearch.report.figures import kept_changes, one_line, running_best, shown_status

MAX_LABELS = 40  # more keeps than this: only the largest gains are labelled (the others are still plotted)
LABEL_CHARS = 44
KEPT, DISCARDED, BEST, TEST = "#2ecc71", "#bbbbbb", "#27ae60", "#2c7fb8"
MARKS = {"crash": ("x", "#d62728"), "timeout": ("v", "#e67e22"), "invalid": ("D", "#8e44ad"), "running": ("o", "#17becf")}


@dataclass
class Progress:
    """What progress.png shows, read back from the plotted artists (the tests count these, not pixels)."""
    path: Path
    width_px: int
    height_px: int
    kept_x: list = field(default_factory=list)
    kept_y: list = field(default_factory=list)
    discarded_x: list = field(default_factory=list)
    discarded_y: list = field(default_factory=list)
    marked: dict = field(default_factory=dict)  # crash / timeout / invalid / running -> experiment numbers on the edge
    test_x: list = field(default_factory=list)
    test_y: list = field(default_factory=list)
    best_x: list = field(default_factory=list)  # the running best's steps
    best_y: list = field(default_factory=list)
    labels: list = field(default_factory=list)  # (text, (x0, y0, x1, y1)) of each label, in pixels from the bottom left
    clipped: int = 0  # discarded points beyond the y range, drawn on its edge
    sigma: float | None = None


def _offsets(better_up: bool):
    """Where a label may go, in points from its point: near first, then further, the empty (better) side first."""
    first = 1 if better_up else -1
    for step in range(0, 15):
        for side in (first, -first):
            dy = side * (8 + 13 * step)
            for dx, ha in ((8, "left"), (-8, "right")):
                yield dx, dy, ha


def _overlap(a, b, pad: float = 1.5) -> bool:
    """Two (x0, y0, x1, y1) pixel boxes overlap, `pad` pixels of margin included."""
    return a[0] - pad < b[2] and b[0] - pad < a[2] and a[1] - pad < b[3] and b[1] - pad < a[3]


def _place_labels(ax, renderer, points, texts, maximize: bool, keep_clear):
    """Greedy de-overlap: each label takes the first candidate offset whose box stays inside the axes and clear of
    the labels placed before it and of the markers, with a leader line to its point (clipped by the label's box,
    so a label beside its point has next to none). Each label's
    size is measured once; the candidates' boxes are arithmetic."""
    frame = ax.get_window_extent(renderer)
    scale = renderer.points_to_pixels(1.0)
    style = dict(textcoords="offset points", va="center", fontsize=7.5, color="#1a7a3a", zorder=6, gid="kept-label",
                 bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.75))
    taken, placed = list(keep_clear), []
    for (x, y), text in zip(points, texts):
        probe = ax.annotate(text, (x, y), xytext=(0, 0), ha="left", **style)
        box = probe.get_window_extent(renderer)
        probe.remove()
        width, height = box.width, box.height
        px, py = ax.transData.transform((x, y))
        chosen, fallback = None, None
        for dx, dy, ha in _offsets(better_up=maximize):
            left = px + dx * scale if ha == "left" else px + dx * scale - width
            middle = py + dy * scale
            candidate = (left, middle - height / 2, left + width, middle + height / 2)
            inside = (frame.x0 <= candidate[0] and candidate[2] <= frame.x1 and frame.y0 + 14 <= candidate[1]
                      and candidate[3] <= frame.y1 - 2)
            clash = sum(_overlap(candidate, other) for other in taken)
            if inside and not clash:
                chosen = (dx, dy, ha, candidate)
                break
            score = (not inside, clash, abs(dy))
            if fallback is None or score < fallback[0]:
                fallback = (score, dx, dy, ha, candidate)
        dx, dy, ha, candidate = chosen or fallback[1:]
        ax.annotate(text, (x, y), xytext=(dx, dy), ha=ha, **style,
                    arrowprops=dict(arrowstyle="-", color="#58b37c", lw=0.6, shrinkA=0, shrinkB=4))
        taken.append(candidate)
        placed.append((text, tuple(float(v) for v in candidate)))
    return placed


def plot_progress(rows, maximize: bool, metric_name: str, path: Path, sigma: float | None = None,
                  title: str | None = None) -> Progress:
    """Draw progress.png in the style of Karpathy's analysis notebook and return what it shows."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # the Agg canvas itself: no pyplot, no GUI backend
    from matplotlib.figure import Figure
    from matplotlib.transforms import blended_transform_factory

    fig = Figure(figsize=(16, 8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    number = {r.id: i + 1 for i, r in enumerate(rows)}  # x: the experiment's number in journal order
    status = {r.id: shown_status(r) for r in rows}
    kept = [r for r in rows if status[r.id] == "keep" and r.metric is not None]
    discarded = [r for r in rows if status[r.id] == "discard" and r.metric is not None]
    steps = running_best(rows, maximize)
    tests = [r for r in kept if r.test_metric is not None]

    # The y range: every keep, its test score and the noise band, plus discards up to half that range beyond the
    # worst keep; the discards further off are drawn on the edge (Karpathy's plot cuts them off too).
    core = [r.metric for r in kept] + [r.test_metric for r in tests]
    lo, hi = (min(core), max(core)) if core else (min((r.metric for r in discarded), default=0.0),
                                                  max((r.metric for r in discarded), default=1.0))
    span = (hi - lo) or abs(hi) * 0.05 or 1.0
    if sigma:
        lo, hi = lo - sigma, hi + sigma
    worse_edge = lo - span / 2 if maximize else hi + span / 2
    shown = [r.metric for r in discarded if (r.metric >= worse_edge if maximize else r.metric <= worse_edge)]
    lo, hi = min([lo] + shown), max([hi] + shown)
    span = (hi - lo) or span
    bottom, top = lo - 0.16 * span, hi + 0.08 * span  # room under the best for the failure markers
    ax.set_ylim(bottom, top)
    clipped = [r for r in discarded if not bottom <= r.metric <= top]

    edge = blended_transform_factory(ax.transData, ax.transAxes)  # x in data, y in axes: marks on an edge
    inside = [r for r in discarded if bottom <= r.metric <= top]
    ax.scatter([number[r.id] for r in inside], [r.metric for r in inside], c=DISCARDED, s=14, alpha=0.6, zorder=2,
               label=f"discarded ({len(discarded)})", gid="discarded")
    if clipped:
        ax.scatter([number[r.id] for r in clipped], [0.09 if maximize else 0.985] * len(clipped), transform=edge,
                   c=DISCARDED, s=18, marker="v" if maximize else "^", alpha=0.8, zorder=2, clip_on=False,
                   label=f"discarded, off the scale ({len(clipped)})", gid="discarded-clipped")
    if steps:
        xs = [number[i] for i, _ in steps]
        ys = [b for _, b in steps]
        xs_line, ys_line = xs + [len(rows)], ys + [ys[-1]]  # the best holds until the last experiment
        ax.step(xs_line, ys_line, where="post", color=BEST, linewidth=2, alpha=0.75, zorder=3, label="running best",
                gid="running-best")
        if sigma:
            ax.fill_between(xs_line, [y - sigma for y in ys_line], [y + sigma for y in ys_line], step="post", color=BEST,
                            alpha=0.12, linewidth=0, zorder=1, label=f"noise floor ±σ (σ = {sigma:.4g})", gid="noise-band")
    ax.scatter([number[r.id] for r in kept], [r.metric for r in kept], c=KEPT, s=56, zorder=5, edgecolors="black",
               linewidths=0.6, label=f"kept ({len(kept)})", gid="kept")
    if tests:
        ax.scatter([number[r.id] for r in tests], [r.test_metric for r in tests], marker="D", s=30, facecolors="none",
                   edgecolors=TEST, linewidths=1.2, zorder=4, label=f"kept: hidden test split ({len(tests)})", gid="test")
    for name, (marker, colour) in MARKS.items():
        xs = [number[r.id] for r in rows if status[r.id] == name]
        if xs:
            ax.scatter(xs, [0.035] * len(xs), transform=edge, marker=marker, c=colour, s=28 if marker == "x" else 18,
                       linewidths=1.5 if marker == "x" else 0.5, zorder=5, clip_on=False, label=f"{name} ({len(xs)})",
                       gid=name)
    segments = sorted({r.segment for r in rows})
    for seg in segments[1:]:
        first = next(r for r in rows if r.segment == seg)
        ax.axvline(number[first.id] - 0.5, color="#888888", linestyle=":", linewidth=1, zorder=1)
        ax.text(number[first.id] - 0.3, 0.98, f"new protocol (segment {seg})", transform=edge, fontsize=7, va="top",
                color="#666666")

    done = sum(status[r.id] != "running" for r in rows)
    running = len(rows) - done
    ax.set_title(title or (f"autoresearch progress: {done} experiments, {len(kept)} kept"
                           + (f", {running} running" if running else "")), fontsize=14)
    ax.set_xlabel("experiment #" + (f"   (labels: the {MAX_LABELS} largest gains of the {len(kept)} kept)"
                                    if len(kept) > MAX_LABELS else ""))
    ax.set_ylabel(f"{metric_name} ({'higher' if maximize else 'lower'} is better)")
    ax.set_xlim(0, max(len(rows), 1) + 1)
    ax.grid(True, alpha=0.2)
    ax.legend(loc="lower left" if maximize else "upper right", fontsize=8, framealpha=0.9)

    renderer = fig.canvas.get_renderer()
    fig.tight_layout()
    fig.set_layout_engine(None)  # the margins stay; without an engine, savefig draws the figure once, not twice
    legend_box = ax.get_legend().get_window_extent(renderer)
    marks = [(number[r.id], r.metric) for r in kept] + [(number[r.id], r.test_metric) for r in tests]
    keep_clear = [tuple(legend_box.extents)] + [_marker_box(x, y) for x, y in (ax.transData.transform(marks) if marks else [])]
    labelled = kept
    if len(kept) > MAX_LABELS:  # the first keep and the largest gains over the running best before them
        gains = {k.row.id: k.gain for k in kept_changes(rows, maximize) if k.gain is not None}
        chosen = {kept[0].id, *sorted(gains, key=lambda i: -gains[i])[:MAX_LABELS - 1]}
        labelled = [r for r in kept if r.id in chosen]
    texts = [one_line(r.description, LABEL_CHARS) for r in labelled]
    placed = _place_labels(ax, renderer, [(number[r.id], r.metric) for r in labelled], texts, maximize, keep_clear)

    path = Path(path)
    fig.savefig(path, dpi=100)
    width, height = fig.canvas.get_width_height()
    out = Progress(path=path, width_px=width, height_px=height, clipped=len(clipped), sigma=sigma, labels=placed)
    for artist in ax.collections:
        gid = artist.get_gid()
        offsets = artist.get_offsets()
        xs, ys = [float(p[0]) for p in offsets], [float(p[1]) for p in offsets]
        if gid == "kept":
            out.kept_x, out.kept_y = xs, ys
        elif gid == "discarded":
            out.discarded_x, out.discarded_y = xs, ys
        elif gid == "test":
            out.test_x, out.test_y = xs, ys
        elif gid in MARKS:
            out.marked[gid] = xs
    for line in ax.lines:
        if line.get_gid() == "running-best":
            out.best_x, out.best_y = [float(v) for v in line.get_xdata()], [float(v) for v in line.get_ydata()]
    return out


def _marker_box(x: float, y: float, r: float = 5.0) -> tuple:
    return (x - r, y - r, x + r, y + r)
