"""The `autoresearch` command line: thin wrappers over the workspace, config and demo modules."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from autoresearch import UsageError, __version__
from autoresearch.workspace import DATASETS


def cmd_init(args) -> int:
    from autoresearch.workspace import init_workspace

    workspace = init_workspace(Path(args.directory), args.template, args.dataset)
    print(f"Created workspace {workspace} (template {args.template}) with one commit.")
    print(f"Next: cd {args.directory} && autoresearch prepare")
    return 0


def cmd_prepare(args) -> int:
    from autoresearch.config import load_config
    from autoresearch.process import run_streaming

    workspace = Path(args.workspace)
    config = load_config(workspace)
    if not config.commands.setup:
        print("This workspace has no setup command; nothing to prepare.")
        return 0
    print(f"$ {config.commands.setup}")
    code, _ = run_streaming(config.commands.setup, workspace, echo=print)
    if code != 0:
        raise UsageError(f"the setup step `{config.commands.setup}` failed with exit code {code}")
    return 0


def cmd_demo(args) -> int:
    from autoresearch.demo import run_demo

    run_demo(Path(args.directory), args.force, args.budget)
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

    p = sub.add_parser("prepare", help="run the workspace's locked set-up step (data, tokenizer)")
    p.add_argument("--workspace", default=".")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("demo", help="init, prepare and train the gpt baseline on the embedded corpus, on the CPU, offline")
    p.add_argument("directory", nargs="?", default="autoresearch-demo")
    p.add_argument("--force", action="store_true", help="replace an existing demo workspace")
    p.add_argument("--budget", type=float, default=30.0, help="training seconds (default 30)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"autoresearch: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("autoresearch: interrupted", file=sys.stderr)
        return 130
