"""`autoresearch status`: the experiments of a branch as a table, with the best, the keep rate and where time went."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from autoresearch.config import load_config
from autoresearch.ledger import Ledger

STYLES = {"keep": "bold green", "discard": "dim", "crash": "red", "timeout": "red", "invalid": "magenta", "running": "cyan"}


def protection_lines(rows) -> list[str]:
    """What protected the recorded runs, as each row had it: never a protection a run did not have."""
    had = [r.protection for r in rows if r.protection is not None]
    lines = []
    if len(had) < len(rows):
        lines.append(f"{len(rows) - len(had)} row(s) were journaled before protection was recorded: nothing is claimed for them.")
    if not had:
        return lines
    boxed = sum(p["sandbox"] == "bubblewrap" for p in had)
    hidden = {p["hidden"] for p in had if p["sandbox"] == "bubblewrap"}
    if boxed == len(had) and hidden and min(hidden) > 0:
        lines.append(f"Sandbox: all {boxed} run(s) in bubblewrap, with {min(hidden)} held-out path(s) hidden from training "
                     "(it saw an allow-list of the machine, read-only, and no network).")
    elif boxed:
        lines.append(f"Sandbox: {boxed} of {len(had)} run(s) in bubblewrap (an allow-list of the machine, read-only, no "
                     "network)" + (", but no held-out path was hidden from training: the task declares none"
                                   if not max(hidden, default=0) else f", hiding {max(hidden)} held-out path(s)") + ".")
    if boxed < len(had):
        lines.append(f"{len(had) - boxed} run(s) had no sandbox: training could read anything you can, held-out data "
                     "included; changes to the watched data are still caught.")
    scored = {p["evaluator"] for p in had if p["evaluator"]}
    if len(scored) and all(p["evaluator"] for p in had):
        lines.append(f"The metric comes from the locked evaluator `{', '.join(sorted(scored))}`, run in its own process.")
    else:
        lines.append("The metric is self-reported: it is the number train.py's own code prints (no `evaluate` command), "
                     "so an edit could forge or game it; the budget, the locked files and the noise rule still hold.")
    return lines


def node_parents(rows) -> dict[int, int | None]:
    """Each row's parent node in the search: its `parent_id`, or, for rows journaled before that column, the
    latest earlier keep of its parent commit (None for a root: the first baseline)."""
    parents, kept = {}, {}
    for r in rows:
        if r.parent_id is not None:
            parents[r.id] = r.parent_id
        else:
            found = kept.get(r.parent_commit)
            parents[r.id] = found if found is not None and r.parent_commit != r.commit_sha else None
        if r.status == "keep" and r.commit_sha:
            kept[r.commit_sha] = r.id
    return parents


def tree_lines(rows, best_id: int | None) -> list[str]:
    """The search tree as text: every row a node under its parent, with its metric and status; the best marked."""
    parents, ids = node_parents(rows), {r.id for r in rows}
    children: dict[int | None, list] = {}
    for r in rows:
        parent = parents[r.id] if parents[r.id] in ids else None
        children.setdefault(parent, []).append(r)
    lines: list[str] = []

    def label(r) -> str:
        metric = f"{r.metric:.6f}" if r.metric is not None else "-"
        return f"#{r.id} {metric} {r.status or r.state}  {' '.join(r.description.split())[:80]}" + ("  ★ best" if r.id == best_id else "")

    def walk(node, prefix: str, last: bool, top: bool) -> None:
        lines.append((label(node) if top else f"{prefix}{'└── ' if last else '├── '}{label(node)}"))
        below = children.get(node.id, [])
        for i, child in enumerate(below):
            walk(child, "" if top else prefix + ("    " if last else "│   "), i == len(below) - 1, False)

    for root in children.get(None, []):
        walk(root, "", True, True)
    return lines


def running_note(r) -> str:
    """What a row still running is doing, from its owner's heartbeat."""
    import time

    since = f", last heartbeat {time.time() - r.heartbeat_at:.0f}s ago" if r.heartbeat_at else ""
    return f"running: pid {r.owner_pid} on {r.owner_host}{since}"


def stats(rows) -> dict:
    done = [r for r in rows if r.state == "done"]
    ran = [r for r in done if r.wall_seconds is not None]
    training = sum(float(r.summary.get("all_runs_training_seconds", r.summary.get("training_seconds", 0)) or 0) for r in ran)
    wall = sum(r.wall_seconds for r in ran)
    evaluation = sum(float(r.summary.get("all_runs_evaluation_seconds", 0) or 0) for r in ran)  # the locked evaluator
    agent = sum(r.propose_seconds or 0 for r in done)
    total = sum(r.experiment_seconds or 0 for r in done)
    span_hours = (max(r.ended_at for r in done) - min(r.started_at for r in done)) / 3600 if done else 0.0
    candidates = [r for r in done if r.description != "baseline"]
    return {
        "experiments": len(done),
        "kept": sum(r.status == "keep" for r in candidates),
        "keep_rate": sum(r.status == "keep" for r in candidates) / len(candidates) if candidates else 0.0,
        "per_hour": len(done) / span_hours if span_hours > 0 else 0.0,
        "training_seconds": training,
        "evaluation_seconds": max(0.0, wall - training) + evaluation,  # start-up, export, and the evaluator
        "agent_seconds": agent,  # the agent thinking up proposals
        "harness_seconds": max(0.0, total - wall - evaluation - agent),  # checks, git, recording
        "stopped_early": sum(r.reason.startswith("stopped early") for r in done),  # early stopping (earlystop.py)
        "early_stop_saved_seconds": sum(float(r.summary.get("early_stop_saved_seconds", 0) or 0) for r in done),
    }


def flag_test_disagreements(rows, maximize: bool, sigma: float, k: float) -> dict[int, str]:
    """Kept candidates whose gain on val is not shared by the hidden test split beyond noise (k·σ), by row id."""
    sign = 1.0 if maximize else -1.0
    flags, previous = {}, None
    for r in rows:
        if r.status != "keep" or r.metric is None:
            continue
        if previous is not None and r.test_metric is not None and previous.test_metric is not None:
            val_gain = sign * (r.metric - previous.metric)
            test_gain = sign * (r.test_metric - previous.test_metric)
            if val_gain - test_gain > k * sigma:
                flags[r.id] = (f"val gained {val_gain:.4g} but the hidden test split {test_gain:+.4g}: "
                               "the gain may be fitted to the validation split")
        previous = r
    return flags


def render_status(ledger: Ledger, maximize: bool, console: Console | None = None, tree: bool | None = None) -> None:
    """The table, the best and the totals; the search tree too with `tree`, or by default when the tag used the
    tree strategy."""
    console = console or Console()
    rows = ledger.rows()
    if not rows:
        console.print(f"No experiments on {ledger.branch} yet.")
        return
    config = load_config(ledger.root)
    sigma = ledger.noise_sigma()
    flags = flag_test_disagreements(rows, maximize, sigma or 0.0, config.decide.threshold_sigmas)
    table = Table(title=f"{ledger.branch}: {ledger.metric_name} ({'higher' if maximize else 'lower'} is better)")
    test_name = config.metric.test_name or f"test {ledger.metric_name}"
    numeric = ("#", ledger.metric_name, test_name, "mem GB", "wall s", "cost $")
    narrow = console.width < 120  # then the reason goes under the description, and memory and wall time are left out
    columns = ["#", "commit", ledger.metric_name, test_name, "mem GB", "status", "description", "wall s", "cost $", "reason"]
    if not any(r.test_metric is not None for r in rows):
        columns.remove(test_name)
    if not any(r.llm_calls for r in rows):
        columns.remove("cost $")
    if narrow:
        columns = [c for c in columns if c not in ("mem GB", "wall s", "reason")]
    for column in columns:  # numbers, commits and statuses are never wrapped; descriptions and reasons wrap
        table.add_column(column, justify="right" if column in numeric else "left",
                         no_wrap=column in numeric or column in ("commit", "status"),
                         min_width=max(len(column), 8) if column in (ledger.metric_name, test_name) else None)
    for r in rows:  # what the agent wrote (descriptions, reasons) is text, never markup
        status = r.status or r.state
        note = Text(r.reason if status not in ("keep", "discard") else "")
        if r.state == "running":
            note = Text(running_note(r))
        if r.id in flags:
            note = Text(f"⚠ {flags[r.id]}", style="yellow")
        description = Text(r.description)
        if narrow and note:
            description.append("\n" + note.plain, style=note.style or "dim")
        cells = {"#": str(r.id), "commit": (r.commit_sha or "-")[:7], "status": Text(status, style=STYLES.get(status, "")),
                 ledger.metric_name: f"{r.metric:.6f}" if r.metric is not None else "-",
                 test_name: f"{r.test_metric:.6f}" if r.test_metric is not None else "-",
                 "mem GB": f"{r.memory_gb:.1f}" if r.memory_gb is not None else "-",
                 "description": description,
                 "wall s": f"{r.wall_seconds:.1f}" if r.wall_seconds is not None else "-",
                 "cost $": f"{r.cost_usd:.4f}" if r.llm_calls else "-", "reason": note}
        table.add_row(*(cells[c] for c in columns))
    console.print(table)
    best = ledger.best()
    s = stats(rows)
    console.print(f"Best {ledger.metric_name}: " + (f"[bold]{best.metric:.6f}[/] at {best.commit_sha[:7]} ({escape(best.description)})" if best else "none yet")
                  + (f"; hidden test split {best.test_metric:.6f}" if best and best.test_metric is not None else ""))
    if flags:
        console.print(f"[yellow]⚠ {len(flags)} kept change(s) gained on val but not on the hidden test split beyond "
                      f"{config.decide.threshold_sigmas:g}σ: see the table.[/]")
    console.print("Noise between seeds: " + (f"σ = {sigma:.6f}, pooled over every experiment run with several seeds" if sigma is not None
                                              else "not measured (one seed per experiment)"))
    for line in protection_lines(rows):
        console.print(escape(line))
    workers = {r.worker for r in rows}
    if len(workers) > 1:
        console.print(f"Workers: {len(workers)} ran trials at once")
    if tree or (tree is None and any(r.strategy == "tree" for r in rows)):
        console.print("Search tree (node, metric, status, description):")
        for line in tree_lines(rows, best.id if best else None):
            console.print(Text(line), overflow="ignore", crop=False, soft_wrap=True)
    console.print(f"Experiments: {s['experiments']}, kept {s['kept']} ({100 * s['keep_rate']:.0f}% of candidates), "
                  f"{s['per_hour']:.1f} per hour")
    calls = sum(r.llm_calls for r in rows)
    if calls:
        tokens = sum(r.input_tokens + r.output_tokens for r in rows)
        console.print(f"Agent spend: ${ledger.total_cost():.4f} estimated over {calls} LLM calls, {tokens:,} tokens "
                      f"(${ledger.total_cost() / max(1, s['experiments']):.4f} per experiment)")
    total = s["training_seconds"] + s["evaluation_seconds"] + s["agent_seconds"] + s["harness_seconds"]
    if total > 0:
        console.print("Time: " + ", ".join(f"{name} {s[key]:.0f}s ({100 * s[key] / total:.0f}%)" for name, key in
                                           (("training", "training_seconds"), ("start-up and evaluation", "evaluation_seconds"),
                                            ("agent", "agent_seconds"), ("harness", "harness_seconds"))))
    if s["stopped_early"]:
        console.print(f"Early stopping: {s['stopped_early']} run(s) stopped, about {s['early_stop_saved_seconds']:.0f}s "
                      "of training saved (their printed loss was far behind the best's; none was evaluated)")


def render_disk(ledger: Ledger, console: Console | None = None) -> None:
    """`status --disk`: what .autoresearch/ holds, and what `autoresearch prune` would free."""
    from autoresearch.disk import human, usage

    console = console or Console()
    parts = usage(ledger.root)
    console.print(f"Disk: {human(sum(n for _, n in parts))} under .autoresearch/: "
                  + ", ".join(f"{what} {human(n)}" for what, n in parts))
    console.print("Kept per experiment: its logs; for a keep, also its saved models (to score and re-score it). "
                  "`autoresearch prune` removes the models of keeps that are no longer their tag's best.")
