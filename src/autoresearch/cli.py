"""The `autoresearch` command line: thin wrappers over the workspace, config and demo modules."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from autoresearch import UsageError, __version__
from autoresearch.config import AGENT_NAMES
from autoresearch.strategies import STRATEGIES
from autoresearch.workspace import DATASETS


def cmd_init(args) -> int:
    from autoresearch.workspace import init_workspace

    workspace = init_workspace(Path(args.directory), args.template, args.dataset)
    print(f"Created workspace {workspace} (template {args.template}) with one commit.")
    print(f"Next: cd {args.directory} && autoresearch prepare")
    return 0


def cmd_adopt(args) -> int:
    from autoresearch.adopt import adopt

    adopt(Path(args.directory))
    return 0


def cmd_prepare(args) -> int:
    from autoresearch.session import prepare_workspace

    prepare_workspace(Path(args.workspace))
    return 0


def cmd_run(args) -> int:
    from autoresearch.session import run_session
    from autoresearch.status import render_status
    from autoresearch.tracking import make_logger

    overrides = {"model": args.model, "base_url": args.base_url, "command": args.command}
    live = live_view(args, Path(args.workspace))
    echo = live.write if live else print
    try:
        tracker = make_logger(Path(args.workspace), args.mlflow, echo)  # --mlflow [URI], else [tracking]
        ledger, maximize = run_session(Path(args.workspace), args.tag, args.agent, args.budget, args.seed, args.max_experiments,
                                       args.max_hours, max_cost=args.max_cost, agent_overrides=overrides, workers=args.workers,
                                       gpus=args.gpus, strategy=args.strategy, executor=args.executor, address=args.address,
                                       observers=[o for o in (live, tracker) if o is not None], echo=echo)
    finally:
        if live is not None:  # run_session closes its observers; this covers an error before it started
            live.close()
    render_status(ledger, maximize)
    return 0


def live_view(args, workspace: Path):
    """The live view (live.py) when stdout is a terminal and --quiet is not given; else None: plain lines, as before."""
    if getattr(args, "quiet", False) or not sys.stdout.isatty():
        return None
    from autoresearch.live import LiveView

    return LiveView(root=workspace)


def cmd_baseline(args) -> int:
    from autoresearch.session import run_session
    from autoresearch.status import render_status

    ledger, maximize = run_session(Path(args.workspace), args.tag, budget=args.budget, seed=args.seed, remeasure=True)
    render_status(ledger, maximize)
    return 0


def cmd_status(args) -> int:
    from autoresearch.session import open_ledger
    from autoresearch.status import render_disk, render_status

    ledger, maximize = open_ledger(Path(args.workspace), args.tag)
    render_status(ledger, maximize, tree=True if args.tree else None)
    if args.disk:
        render_disk(ledger)
    return 0


def cmd_prune(args) -> int:
    from autoresearch.disk import human, prunable, prune, size_of
    from autoresearch.ledger import Ledger
    from autoresearch.session import open_ledger

    ledger, maximize = open_ledger(Path(args.workspace), None)
    tags = [Ledger(ledger.root, branch, ledger.metric_name, maximize) for branch in ledger.branches()]
    rows = [r for tag in tags for r in tag.rows()]
    best = {b.id for b in (tag.best() for tag in tags) if b is not None}
    paths = prunable(ledger.root, rows, best)
    freed = sum(size_of(p) for p in paths) if args.dry_run else prune(paths)
    verb = "Would free" if args.dry_run else "Freed"
    print(f"{verb} {human(freed)}: the models of {len({p.parent for p in paths})} kept experiment(s) that are no "
          "longer their tag's best (logs, the journal and every commit stay).")
    return 0


def cmd_export(args) -> int:
    from autoresearch.export import export_csv, export_json
    from autoresearch.session import open_ledger

    ledger, maximize = open_ledger(Path(args.workspace), args.tag)
    if args.tag:
        ledger.require_rows()  # a tag named on the command line must have experiments
    sys.stdout.write(export_json(ledger, maximize) if args.format == "json" else export_csv(ledger))
    return 0


def cmd_report(args) -> int:
    from autoresearch.report import write_report
    from autoresearch.session import open_ledger

    ledger, maximize = open_ledger(Path(args.workspace), args.tag)
    for path in write_report(ledger, maximize, Path(args.out) if args.out else None):
        print(f"Wrote {path}")
    return 0


def cmd_demo(args) -> int:
    from autoresearch.demo import run_demo

    live = live_view(args, Path(args.directory))
    try:
        run_demo(Path(args.directory), args.force, args.budget, args.experiments, echo=live.write if live else print,
                 observers=[live] if live else [])
    finally:
        if live is not None:
            live.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autoresearch", description="Autonomous ML research under a harness that enforces the protocol.")
    parser.add_argument("--version", action="version", version=f"autoresearch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init", help="create a workspace: a git repo with prepare.py, train.py, program.md, autoresearch.toml")
    p.add_argument("directory")
    p.add_argument("--template", default="gpt")
    p.add_argument("--dataset", choices=DATASETS, default=None, help="data for the gpt template (default: kjv, embedded)")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("adopt", help="make a repository laid out like Karpathy's autoresearch (prepare.py, train.py, "
                       "program.md) a workspace: autoresearch.toml, program.autoresearch.md, .gitignore, one commit")
    p.add_argument("directory", nargs="?", default=".", help="the repository's top folder (default: the current folder)")
    p.set_defaults(func=cmd_adopt)

    p = sub.add_parser("prepare", help="run the workspace's locked set-up step (data, tokenizer)")
    p.add_argument("--workspace", default=".")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("run", help="the research loop: baseline, then propose, run, keep or revert, record; resumes where it stopped")
    p.add_argument("--workspace", default=".")
    p.add_argument("--tag", default=None, help="experiments go on branch autoresearch/<tag> (default: today, e.g. nov22); an existing tag is resumed")
    p.add_argument("--agent", default=None, choices=list(AGENT_NAMES),
                   help="who proposes (default: [agent] name in autoresearch.toml); aider, claude-code and codex run "
                        "that coding-agent CLI, command any other")
    p.add_argument("--model", default=None, help="openai / anthropic / aider / claude-code / codex: the model")
    p.add_argument("--base-url", default=None, help="an endpoint: OpenAI-compatible for openai, aider and codex (vLLM, "
                                                   "llama.cpp, Ollama, OpenRouter...), Anthropic for claude-code")
    p.add_argument("--command", default=None, help="command agent: a coding-agent CLI, e.g. 'claude -p {prompt_file}'")
    p.add_argument("--max-cost", type=float, default=None, help="stop once the estimated agent spend on this branch reaches USD")
    p.add_argument("--budget", type=float, default=None, help="training seconds per experiment (default from autoresearch.toml)")
    p.add_argument("--seed", type=int, default=42, help="AUTORESEARCH_SEED given to every run")
    p.add_argument("--max-experiments", type=int, default=None, help="stop after N experiments (the baseline not counted)")
    p.add_argument("--max-hours", type=float, default=None, help="start no experiment after H hours")
    p.add_argument("--workers", type=int, default=1, help="trials at once, each in its own worktree and device slot "
                   "(a GPU each on CUDA, else a share of the cores); the agent proposes while they train (default 1)")
    p.add_argument("--gpus", default=None, help="CUDA: the GPUs the workers use, e.g. 0,1,2,3 (default: every visible one)")
    p.add_argument("--strategy", default="greedy", choices=list(STRATEGIES),
                   help="greedy: every idea edits the best (Karpathy's); parallel: rounds of K ideas from the best; "
                        "tree: AIDE-style search over every measured node (default greedy)")
    p.add_argument("--executor", default="local", choices=["local", "ray"],
                   help="local: subprocesses here; ray: one Ray task per run (the extra `ray`)")
    p.add_argument("--address", default=None, help="ray: the cluster's address (default: a local Ray on 127.0.0.1)")
    p.add_argument("--quiet", action="store_true", help="plain lines, no live view (the default when stdout is not a terminal)")
    p.add_argument("--mlflow", nargs="?", const="default", default=None, metavar="URI",
                   help="log each experiment as an MLflow run (the extra `mlflow`), under an MLflow experiment named after "
                        "the branch: alone, to a local store under .autoresearch/mlflow/; or to URI, e.g. "
                        "http://127.0.0.1:5000 (default: [tracking] in autoresearch.toml)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("baseline", help="re-run the best commit once per seed with fresh seeds: refreshes the best mean and σ")
    p.add_argument("--workspace", default=".")
    p.add_argument("--tag", default=None)
    p.add_argument("--budget", type=float, default=None)
    p.add_argument("--seed", type=int, default=42)
    p.set_defaults(func=cmd_baseline)

    p = sub.add_parser("status", help="the experiments as a table: best so far, keep rate, experiments per hour, time split")
    p.add_argument("--workspace", default=".")
    p.add_argument("--tag", default=None)
    p.add_argument("--disk", action="store_true", help="also what .autoresearch/ holds, by kind")
    p.add_argument("--tree", action="store_true", help="also the search tree: every node under its parent, with its metric "
                   "(shown by default for a tag run with --strategy tree)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("prune", help="free disk: remove the saved models of kept experiments that are no longer their tag's best")
    p.add_argument("--workspace", default=".")
    p.add_argument("--dry-run", action="store_true", help="only say what would be freed")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("export", help="the journal of a tag as JSON or CSV on stdout, every column (schema "
                       "autoresearch.export/1, in the README), for scripts, notebooks and agents")
    p.add_argument("--workspace", default=".")
    p.add_argument("--tag", default=None)
    p.add_argument("--format", choices=["json", "csv"], default="json", help="json (default) or csv")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("report", help="progress.png, report.md and a self-contained report.html for a tag, from its "
                       "journal as recorded so far (a live run included)")
    p.add_argument("--workspace", default=".")
    p.add_argument("--tag", default=None)
    p.add_argument("--out", default=None, help="the folder to write into (default: .autoresearch/report/<tag>/)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("demo", help="init, prepare, and run a few experiments of the loop on the embedded corpus, offline")
    p.add_argument("directory", nargs="?", default="autoresearch-demo")
    p.add_argument("--force", action="store_true", help="replace an existing demo workspace")
    p.add_argument("--budget", type=float, default=20.0, help="training seconds per experiment (default 20)")
    p.add_argument("--experiments", type=int, default=6, help="experiments after the baseline (default 6)")
    p.add_argument("--quiet", action="store_true", help="plain lines, no live view (the default when stdout is not a terminal)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"autoresearch: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        terminated = type(exc).__name__ == "Terminated"
        print(f"autoresearch: {'terminated' if terminated else 'interrupted'}: recorded, the branch is at the best", file=sys.stderr)
        return 143 if terminated else 130
