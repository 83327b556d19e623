"""`autoresearch adopt`: turn a repository laid out like Karpathy's autoresearch into a workspace, with no hand edits."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from autoresearch import UsageError
from autoresearch.adopt.program import harness_program, harness_program_body  # noqa: F401 (the tests use it)
from autoresearch.adopt.protocol import GITIGNORE, _num, gitignore_addition, render_toml
from autoresearch.adopt.reading import DEFAULT_CACHE, HF_HUB_CACHE, PROGRAM, PROGRAM_OUT, Fit, fit_repository
from autoresearch.config import CONFIG_FILE, load_config, parse_config
from autoresearch.workspace import _identity_args, git


def check_repository(root: Path) -> None:
    """Refuse what adopt must not touch: not a git repository's top level, no train.py/prepare.py, a config already there."""
    if not root.is_dir():
        raise UsageError(f"{root} is not a folder")
    if shutil.which("git") is None:
        raise UsageError("git is not installed or not on PATH; install git and try again")
    top = git(root, "rev-parse", "--show-toplevel", check=False)
    if top.returncode != 0:
        raise UsageError(f"{root} is not a git repository; `git init` it and commit train.py and prepare.py first")
    if Path(top.stdout.strip()).resolve() != root.resolve():
        raise UsageError(f"{root} is inside the git repository {top.stdout.strip()}, not its top level; "
                         "adopt the repository's top folder")
    missing = [name for name in ("train.py", "prepare.py") if not (root / name).is_file()]
    if missing:
        raise UsageError(f"{root} has no {' and no '.join(missing)}; adopt is for a repository laid out like "
                         "Karpathy's autoresearch (prepare.py, train.py, program.md)")
    if (root / CONFIG_FILE).exists():
        raise UsageError(f"{root / CONFIG_FILE} already exists; adopt never overwrites it (this is a workspace already: "
                         "`autoresearch run`)")


def _write_new(path: Path, text: str) -> None:
    """Create `path` with `text`; an existing file is never overwritten (the open fails)."""
    with open(path, "x", encoding="utf-8") as f:
        f.write(text)


def _committed_at_head(root: Path, names: list[str]) -> list[str]:
    """Those of `names` that HEAD does not hold (all of them when there is no commit yet)."""
    if git(root, "rev-parse", "--verify", "--quiet", "HEAD", check=False).returncode != 0:
        return list(names)
    held = set(git(root, "ls-tree", "-r", "--name-only", "HEAD", "--", *names).stdout.splitlines())
    return [n for n in names if n not in held]


def _gitignore_is_users(root: Path) -> bool:
    """Whether .gitignore holds changes of the user's that a commit of it would take along (or is theirs, untracked)."""
    path = root / GITIGNORE
    if not path.exists():
        return False
    if git(root, "ls-files", "--error-unmatch", "--", GITIGNORE, check=False).returncode != 0:
        return True
    return git(root, "diff", "--quiet", "HEAD", "--", GITIGNORE, check=False).returncode != 0


def commit_plan(root: Path, fit: Fit, program_existed: bool) -> tuple[bool, bool, str, list[str]]:
    """(commit?, with .gitignore?, why not, the user's files to commit first): commit only when the user has nothing
    staged and the files the config names are committed, so that the commit holds exactly adopt's files and
    validates at HEAD."""
    if git(root, "diff", "--cached", "--quiet", check=False).returncode != 0:
        return False, False, "you have staged changes, and adopt never mixes your work into its commit", []
    needed = ["train.py"] + [n for n in fit.locked if n not in (PROGRAM_OUT, CONFIG_FILE)]
    if program_existed:  # the user's own program.autoresearch.md: the commit must not need it uncommitted
        needed.append(PROGRAM_OUT)
    absent = _committed_at_head(root, needed)
    if absent:
        return False, False, f"{', '.join(absent)} {'is' if len(absent) == 1 else 'are'} not committed yet", absent
    return True, not _gitignore_is_users(root), "", []


def adopt(directory: Path, echo=print, uv_path: str | None | bool = True) -> list[str]:
    """Make `directory` a workspace: write autoresearch.toml, program.autoresearch.md and .gitignore entries, and
    commit them. `uv_path`: True to look uv up on PATH, else the path (None: no uv). Returns the paths written."""
    root = Path(directory).resolve()
    check_repository(root)
    uv = shutil.which("uv") if uv_path is True else uv_path or None
    fit = fit_repository(root, uv)
    program_existed = fit.program_is_users = (root / PROGRAM_OUT).exists()
    source = (root / PROGRAM).read_text(encoding="utf-8") if (root / PROGRAM).is_file() else None
    program_text = None if program_existed else harness_program(source, fit)
    toml_text = render_toml(fit)
    known = {PROGRAM_OUT, CONFIG_FILE}
    parse_config(toml_text, CONFIG_FILE, lambda name: name in known or (root / name).is_file(),
                 lambda pattern: any(root.glob(pattern)))  # checked before anything is written
    gitignore_path = root / GITIGNORE
    existing = gitignore_path.read_text(encoding="utf-8") if gitignore_path.is_file() else ""
    addition = gitignore_addition(existing)
    plan = commit_plan(root, fit, program_existed)

    written = []
    if program_text is not None:
        _write_new(root / PROGRAM_OUT, program_text)
        written.append(PROGRAM_OUT)
    _write_new(root / CONFIG_FILE, toml_text)
    written.append(CONFIG_FILE)
    if addition:
        with open(gitignore_path, "a", encoding="utf-8") as f:
            f.write(addition)
        written.append(GITIGNORE)
    load_config(root)  # what the harness will read
    committed = commit(root, written, plan)
    report(root, fit, written, program_existed, source is not None, committed, echo)
    return written


def commit(root: Path, written: list[str], plan: tuple[bool, bool, str, list[str]]) -> str:
    """One commit of exactly adopt's files (git commit --only), when commit_plan allows it; what to tell the user."""
    ok, with_gitignore, why, theirs = plan
    if not ok:
        return (f"Not committed: {why}. The harness reads autoresearch.toml as committed, so commit these files "
                f"yourself: git add {' '.join(theirs + written)} && git commit -m 'autoresearch: adopt'")
    paths = [p for p in written if p != GITIGNORE or with_gitignore]
    new = [p for p in paths if git(root, "ls-files", "--error-unmatch", "--", p, check=False).returncode != 0]
    if new:
        git(root, "add", "--", *new)
    git(root, *_identity_args(root), "commit", "-q", "--only", "-m",
        f"autoresearch: adopt this repository ({', '.join(paths)})", "--", *paths)
    note = f"Committed {', '.join(paths)} (one commit; nothing else of yours is in it)."
    if GITIGNORE in written and not with_gitignore:
        note += f" {GITIGNORE} had changes of yours, so it stayed out of the commit: commit it when you are ready."
    return note


def report(root: Path, fit: Fit, written: list[str], program_existed: bool, had_program: bool, committed: str,
           echo) -> None:
    """The summary adopt prints: what it wrote and why, what the metric allows, and the next steps."""
    echo(f"Adopted {root} as an autoresearch workspace.")
    echo(f"  {CONFIG_FILE}: metric {fit.metric} ({fit.direction}{'' if fit.direction_known else ', a guess: check it'}), "
         f"budget {_num(fit.seconds)} s (TIME_BUDGET in prepare.py; change it there, not with --budget), "
         f"start-up allowance {_num(fit.allowance)} s, killed at {_num(2 * fit.seconds + fit.allowance)} s")
    echo(f"  run: {fit.run}")
    echo(f"    because {fit.why}.")
    if fit.missing_modules:
        echo(f"  Warning: this Python ({sys.executable}) cannot import {', '.join(fit.missing_modules)}, which "
             "prepare.py/train.py import: install them into it, or the runs will crash.")
    echo(f"  Data: training reads {fit.cache} (an allow-listed sandbox); the validation shard and the tokenizer are "
         "protected by content. Nothing can be hidden: train.py reads the validation shard to score itself.")
    if not fit.cache_known:
        echo(f"  CACHE_DIR in prepare.py is not a plain path, so adopt assumed {DEFAULT_CACHE}: check [sandbox].")
    echo(f"  The metric is self-reported: train.py, which the agent edits, computes and prints {fit.metric}, so an "
         "agent could forge or game it. The harness still enforces the time limit, the locked prepare.py, the "
         "protected data and noise-aware keeps.")
    if program_existed:
        echo(f"  {PROGRAM_OUT} already exists, so it was left as it is and is the program the agent reads.")
    elif had_program:
        echo(f"  {PROGRAM_OUT}: {PROGRAM} without the loop, git and logging steps the harness now does (your "
             f"{PROGRAM} is unchanged, and locked); the agent reads this one.")
    else:
        echo(f"  {PROGRAM_OUT}: a short program (there was no {PROGRAM}); write your goals and ideas into it.")
    if GITIGNORE in written:
        echo(f"  {GITIGNORE}: now leaves .autoresearch/ and results.tsv untracked.")
    if fit.uses_kernels and not Path(os.path.expanduser(HF_HUB_CACHE)).is_dir():
        echo(f"  train.py fetches a kernel from the Hugging Face Hub: mkdir -p {HF_HUB_CACHE} so that runs keep it.")
    echo(committed)
    echo("Next: autoresearch prepare   (downloads the data and trains the tokenizer: `" + fit.setup + "`)")
    echo("      autoresearch run       (the baseline, then experiments; --agent for an LLM or a coding-agent CLI)")
