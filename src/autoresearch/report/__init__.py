"""`autoresearch report`: progress.png, report.md and report.html for a tag, from its journal as recorded so far."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from autoresearch import UsageError
from autoresearch.ledger import STATE_DIR
from autoresearch.report import figures

DEFAULT_THRESHOLD = 2.0  # [decide] threshold_sigmas where the workspace's autoresearch.toml cannot be read


@dataclass
class Report:
    """Everything the three files show, computed once from the rows."""
    tag: str
    made_at: str
    rows: list
    summary: figures.Summary
    experiments: list
    kept: list
    top: list
    crashed: list
    invalid: list
    flags: dict
    k: float
    parents: dict
    best_id: int | None
    tree_lines: list = field(default_factory=list)

    @property
    def rows_by_id(self) -> dict:
        return {r.id: r for r in self.rows}


@dataclass
class Written:
    """The files a report wrote (iterate over it for their paths) and what its plot shows."""
    png: Path
    md: Path
    html: Path
    progress: object  # plot.Progress
    report: Report

    def __iter__(self):
        return iter((self.png, self.md, self.html))


def build_report(rows, maximize: bool, metric_name: str, branch: str, best, sigma: float | None,
                 k: float = DEFAULT_THRESHOLD, segment: int | None = None) -> Report:
    """The report's content from journal rows (pure: no journal, no files)."""
    from autoresearch.status import tree_lines

    items = figures.experiments(rows, maximize)
    summary = figures.summarize(rows, maximize, best, sigma, metric_name, branch, segment)
    return Report(
        tag=branch.removeprefix("autoresearch/"), made_at=time.strftime("%Y-%m-%d %H:%M:%S %Z"), rows=rows,
        summary=summary, experiments=items, kept=figures.kept_changes(rows, maximize), top=figures.top_by_gain(items),
        crashed=figures.failures(rows), invalid=figures.failures(rows, ("invalid",)),
        flags=figures.disagreements(rows, maximize, sigma, k), k=k, parents={x.row.id: x.parent for x in items},
        best_id=best.id if best is not None else None,
        tree_lines=tree_lines(rows, best.id if best is not None else None) if summary.draws_tree else [])


def threshold_of(root: Path) -> float:
    """The keep rule's k (σ) from the workspace's autoresearch.toml, as `autoresearch status` uses it."""
    from autoresearch.config import load_config

    try:
        return load_config(root).decide.threshold_sigmas
    except UsageError:
        return DEFAULT_THRESHOLD


def default_out(ledger) -> Path:
    return Path(ledger.root) / STATE_DIR / "report" / ledger.tag


def write_report(ledger, maximize: bool, out: Path | None = None) -> Written:
    """Write progress.png, report.md and report.html for the ledger's branch into `out` (default
    .autoresearch/report/<tag>/). It only reads the journal, so it runs beside a live run without its lock."""
    from autoresearch.report.html import render_html
    from autoresearch.report.markdown import render_markdown
    from autoresearch.report.plot import plot_progress

    rows = ledger.require_rows(", nothing to report")
    best, sigma = ledger.best(), ledger.noise_sigma()
    report = build_report(rows, maximize, ledger.metric_name, ledger.branch, best, sigma, threshold_of(ledger.root),
                          ledger.segment)
    out = Path(out) if out is not None else default_out(ledger)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot write the report into {out}: {exc.strerror or exc}") from None
    if not out.is_dir():
        raise UsageError(f"cannot write the report into {out}: it is not a folder")
    png, md, html = out / "progress.png", out / "report.md", out / "report.html"
    progress = plot_progress(rows, maximize, ledger.metric_name, png, sigma)
    md.write_text(render_markdown(report), encoding="utf-8")
    html.write_text(render_html(report, png.read_bytes()), encoding="utf-8")
    return Written(png, md, html, progress, report)
