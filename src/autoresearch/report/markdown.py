"""report.md: the summary, time split, spend, kept changes with diffs, top experiments, crashes and disagreements."""

from __future__ import annotations

import re

from autoresearch.report.figures import (TIME_PARTS, duration, fmt, last_log_line, one_line)

_SPECIAL = re.compile(r"([\\`*\[\]<>|#_~])")


def md_text(text: str, limit: int | None = None) -> str:
    """Journal text (from an LLM) on one line, with Markdown's and HTML's special characters escaped."""
    return _SPECIAL.sub(r"\\\1", one_line(text, limit))


def fence(text: str, lang: str = "") -> str:
    """`text` in a code fence longer than any run of backticks inside it."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{lang}\n{text.rstrip()}\n{ticks}"


def pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def render_markdown(report) -> str:
    """The whole of report.md for a `Report` (see autoresearch.report)."""
    s = report.summary
    name = s.metric_name
    out = [f"# autoresearch report: {md_text(report.tag)}", "",
           f"Branch `{s.branch}`, metric `{name}` ({'higher' if s.maximize else 'lower'} is better). "
           f"Made {report.made_at} from the journal as recorded so far: {s.finished} finished experiment(s)"
           + (f", {s.running} still running (shown as running, not counted)" if s.running else "") + ".", "",
           "![progress](progress.png)", "", "## Summary", "", "| | |", "|---|---|"]
    if s.baseline is not None and s.best is not None:
        change = f"{fmt(s.delta, signed=True)}" + (f" ({s.delta_pct:+.2f}%)" if s.delta_pct is not None else "")
        out.append(f"| baseline → best | {fmt(s.baseline.metric)} → **{fmt(s.best.metric)}**: {change}, "
                   f"{'better' if (s.gain or 0) > 0 else 'no better' if not s.gain else 'worse'} |")
        out.append(f"| best | #{s.best.id} `{(s.best.commit_sha or '-')[:7]}` {md_text(s.best.description, 100)}"
                   + (f"; hidden test split {fmt(s.best.test_metric)}" if s.best.test_metric is not None else "") + " |")
    else:
        out.append("| baseline → best | no kept measurement yet |")
    out += [f"| experiments | {s.finished} finished" + (f", {s.running} running" if s.running else "")
            + f"; {s.candidates} candidate(s) after the baseline |",
            f"| kept | {s.kept} ({100 * s.keep_rate:.1f}% of candidates) |",
            f"| crashed or timed out | {s.failed} ({100 * s.failed_rate:.1f}% of candidates) |",
            f"| invalid (refused by the integrity checks) | {s.invalid} |",
            f"| experiments per hour | {s.per_hour:.1f} |",
            "| noise between seeds | " + (f"σ = {s.sigma:.6g}" if s.sigma is not None else "not measured (one seed per run)") + " |"]
    if s.workers > 1:
        out.append(f"| workers | {s.workers} ran trials at once |")

    out += ["", "## Where the time went", ""]
    total = s.total_seconds
    if total > 0:
        out += ["| part | time | share |", "|---|---:|---:|"]
        out += [f"| {label} | {duration(s.time[key])} ({s.time[key]:.0f} s) | {pct(s.time[key], total)} |" for label, key in TIME_PARTS]
        out.append(f"| **total** | {duration(total)} ({total:.0f} s) | 100% |")
        if s.time.get("stopped_early"):
            out += ["", f"Early stopping ended {s.time['stopped_early']} run(s), saving about "
                        f"{duration(s.time['early_stop_saved_seconds'])} of training."]
    else:
        out.append("Nothing finished yet.")

    out += ["", "## The agent's spend", ""]
    if s.llm_calls or s.input_tokens or s.output_tokens or s.cost_usd:
        out += ["| | |", "|---|---:|", f"| LLM calls | {s.llm_calls:,} |", f"| input tokens | {s.input_tokens:,} |",
                f"| output tokens | {s.output_tokens:,} |", f"| dollars (estimated) | ${s.cost_usd:.4f} |",
                f"| per finished experiment | ${s.cost_per_experiment:.4f} |"]
        if s.kept:
            out.append(f"| per kept change | ${s.cost_usd / s.kept:.4f} |")
    else:
        out.append("None recorded: the agent made no LLM calls (an offline agent such as `tune`).")

    out += ["", f"## Kept changes ({len(report.kept)})", ""]
    for i, k in enumerate(report.kept, 1):
        r = k.row
        against = (f"{fmt(k.delta, signed=True)} vs the previous best {fmt(k.previous_best)}" if k.delta is not None
                   else "the starting point")
        out.append(f"### {i}. #{r.id} {md_text(r.description, 120)}")
        out.append("")
        out.append(f"{name} **{fmt(r.metric)}** ({against})"
                   + (f"; hidden test split {fmt(r.test_metric)}" if r.test_metric is not None else "")
                   + f"; commit `{(r.commit_sha or '-')[:7]}`" + (f"; ⚠ {md_text(report.flags[r.id])}" if r.id in report.flags else ""))
        if r.diff.strip():
            out += ["", fence(r.diff, "diff")]
        out.append("")
    if not report.kept:
        out.append("None yet.")

    out += ["", f"## Top experiments by delta against their parent ({len(report.top)})", ""]
    if report.top:
        out += [f"| # | status | {name} | delta | parent | description |", "|---:|---|---:|---:|---:|---|"]
        out += [f"| {e.row.id} | {e.status} | {fmt(e.row.metric)} | {fmt(e.delta, signed=True)} | "
                f"{'#' + str(e.parent) if e.parent is not None else '-'} | {md_text(e.row.description, 100)} |" for e in report.top]
    else:
        out.append("No measured candidate yet.")

    out += ["", f"## Ideas that crashed or timed out ({len(report.crashed)})", ""]
    if report.crashed:
        out += ["| # | status | attempt | description | reason | last log line |", "|---:|---|---:|---|---|---|"]
        out += [f"| {r.id} | {r.status} | {r.attempt} | {md_text(r.description, 100)} | {md_text(r.reason, 160)} | "
                f"{md_text(last_log_line(r), 160)} |" for r in report.crashed]
    else:
        out.append("None.")
    if report.invalid:
        out += ["", f"## Invalid results ({len(report.invalid)})", "",
                "| # | description | reason |", "|---:|---|---|"]
        out += [f"| {r.id} | {md_text(r.description, 100)} | {md_text(r.reason, 200)} |" for r in report.invalid]

    out += ["", f"## Val/test disagreements ({len(report.flags)})", ""]
    if report.flags:
        out += [f"- #{i} {md_text(report.rows_by_id[i].description, 100)}: {md_text(why)}" for i, why in report.flags.items()]
    elif any(r.test_metric is not None for r in report.rows):
        out.append(f"None: every kept gain on val is shared by the hidden test split within {report.k:g}σ.")
    else:
        out.append("No hidden test split was scored (the task has no `test` command).")

    if s.draws_tree:
        out += ["", "## Search tree", "", fence("\n".join(report.tree_lines))]
    return "\n".join(out) + "\n"
