"""`autoresearch status`: the experiments of a branch as a table, with the best, the keep rate and where time went."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from autoresearch.config import load_config
from autoresearch.ledger import Ledger

STYLES = {"keep": "bold green", "discard": "dim", "crash": "red", "timeout": "red", "invalid": "magenta"}


def stats(rows) -> dict:
    done = [r for r in rows if r.state == "done"]
    ran = [r for r in done if r.wall_seconds is not None]
    training = sum(float(r.summary.get("all_runs_training_seconds", r.summary.get("training_seconds", 0)) or 0) for r in ran)
    wall = sum(r.wall_seconds for r in ran)
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
        "evaluation_seconds": max(0.0, wall - training),  # start-up and evaluation inside the run
        "agent_seconds": agent,  # the agent thinking up proposals
        "harness_seconds": max(0.0, total - wall - agent),  # checks, git, recording
    }


def render_status(ledger: Ledger, maximize: bool, console: Console | None = None) -> None:
    console = console or Console()
    rows = ledger.rows()
    if not rows:
        console.print(f"No experiments on {ledger.branch} yet.")
        return
    table = Table(title=f"{ledger.branch}: {ledger.metric_name} ({'higher' if maximize else 'lower'} is better)")
    paid = any(r.llm_calls for r in rows)
    columns = ("#", "commit", ledger.metric_name, "mem GB", "status", "description", "wall s") + (("cost $",) if paid else ()) + ("reason",)
    for column in columns:
        table.add_column(column, justify="right" if column in ("#", ledger.metric_name, "mem GB", "wall s", "cost $") else "left")
    for r in rows:
        status = r.status or r.state
        table.add_row(str(r.id), (r.commit_sha or "-")[:7], f"{r.metric:.6f}" if r.metric is not None else "-",
                      f"{r.memory_gb:.1f}" if r.memory_gb is not None else "-", f"[{STYLES.get(status, '')}]{status}[/]",
                      r.description, f"{r.wall_seconds:.1f}" if r.wall_seconds is not None else "-",
                      *((f"{r.cost_usd:.4f}" if r.llm_calls else "-",) if paid else ()),
                      r.reason if status not in ("keep", "discard") else "")
    console.print(table)
    best = ledger.best()
    s = stats(rows)
    console.print(f"Best {ledger.metric_name}: " + (f"[bold]{best.metric:.6f}[/] at {best.commit_sha[:7]} ({best.description})" if best else "none yet"))
    sigma = ledger.noise_sigma()
    console.print("Noise between seeds: " + (f"σ = {sigma:.6f}, pooled over every experiment run with several seeds" if sigma is not None
                                              else "not measured (one seed per experiment)"))
    evaluator = load_config(ledger.root).commands.evaluate
    console.print(f"The metric comes from the locked evaluator `{evaluator}`, run in its own process." if evaluator else
                  "The metric is self-reported: it is the number the run prints (no `evaluate` command in autoresearch.toml).")
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
