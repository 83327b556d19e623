"""The command agent: runs a coding-agent CLI (a preset, or any command) in a scratch worktree and reads its edits with git."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

from autoresearch import UsageError
from autoresearch.agents.base import Context, Proposal, Result, Usage
from autoresearch.agents.presets import Invocation, Launch, Preset
from autoresearch.agents.prompt import build_prompt
from autoresearch.config import AgentSettings, load_config
from autoresearch.executors.local import group_alive, kill_group
from autoresearch.gitguard import GitGuard
from autoresearch.ledger import STATE_DIR
from autoresearch.process import command_env
from autoresearch.workspace import Workspace

PLACEHOLDER = "{prompt_file}"
PROMPT_DIR = Path(STATE_DIR) / "prompts"
MAX_DESCRIPTION = 200
EDIT_SYNTAX = ("<<<<<<<", "=======", ">>>>>>>", "*** ", "@@", "+++ ", "--- ", "```", "diff --git")
OUTPUT_TAIL_BYTES = 256_000  # the description is looked for in the last part of the CLI's output
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07")


class CommandAgent:
    """Runs a coding-agent CLI in a scratch worktree at the parent commit (the user's checkout is never
    touched); the CLI edits files there, and the harness reads them with git.

    With a `preset` (aider, claude-code, codex) the CLI's command line, environment and own folder come from
    it. Otherwise `settings.command` runs with `sh -c`: `{prompt_file}` in it becomes the (shell-quoted) path of
    the prompt, and a command without it gets the prompt on stdin. A change to a task file that is not editable
    rejects the proposal; new files that are not editable (the CLI's history, caches, notes) are left out of it.
    The scratch worktree is removed afterwards and the edits return as a Proposal, which the loop commits in a
    trial of its own. A run is killed at `[agent] timeout_seconds`.

    `spent` stays at zero: what the CLI itself costs (its own tokens and dollars) is unknown to the harness.
    Why the last proposal came back as None is in `last_error`.
    """

    kill_grace = 5.0  # seconds between SIGTERM and SIGKILL for the CLI's process group

    def __init__(self, settings: AgentSettings, workspace: Path | str | None = None, tag: str | None = None,
                 preset: Preset | None = None):
        if preset is None and not (settings.command or "").strip():
            raise UsageError('the command agent needs [agent] command, e.g. command = "claude -p {prompt_file}", '
                             "or one of the presets: --agent aider, claude-code or codex")
        self.settings = settings
        self.preset = preset
        self.name = preset.name if preset else "command"
        self.workspace = Path(workspace).resolve() if workspace else None
        self.tag = tag  # the session's: other tags' refs are theirs to move meanwhile
        self.spent = Usage()
        self.last_error: str | None = None
        self.last_note: str = ""  # what the last proposal left behind in the user's checkout, or left out
        self.last_log: Path | None = None

    def observe(self, result: Result) -> None:
        pass

    def propose(self, context: Context) -> Proposal | None:
        self.last_error, self.last_note = None, ""
        root = Path(context.workspace).resolve() if context.workspace else self.workspace
        if root is None:
            raise UsageError("the command agent needs the workspace's folder")
        locked = list(dict.fromkeys([*context.locked, "autoresearch.toml"]))
        repo = Workspace(root, self._editable(context, root), locked)
        base = context.parent_commit or repo.head()
        prompt_path, log_path = self._next_paths(root)
        prompt_path.write_text(build_prompt(context, reply_format="direct"), encoding="utf-8")
        self.last_log = log_path
        scratch = root / STATE_DIR / "agent" / str(os.getpid())
        ws = repo.add_worktree(scratch, base)  # the CLI works here, never in the user's checkout
        guard = GitGuard(root, self.tag)  # it runs unsandboxed: what it does to the git data is undone
        files_before, left = _leftovers(repo), []
        try:
            invocation = Invocation(prompt_path, self._state_dir(root), [p for p in ws.names_at(base) if ws.is_editable(p)],
                                    sorted(p for p in context.locked if p != "autoresearch.toml"))
            proposal = self._propose_in(ws, context, base, invocation, log_path, guard)
            left = sorted(_leftovers(repo) - files_before)
        finally:
            repo.remove_worktree(scratch)
        if left:  # the user's files: named, never removed
            self.last_note = f"the command left files in your checkout, which are not removed: {', '.join(left[:5])}"
        return proposal

    def _propose_in(self, ws: Workspace, context: Context, base: str, invocation: Invocation, log_path: Path,
                    guard: GitGuard) -> Proposal | None:
        """Run the CLI in the scratch worktree `ws` (at `base`), undo what it did to the git data (before any more
        git runs), and read what it changed."""
        git_before = guard.snapshot([ws.root])
        before = self._untracked(ws)
        if context.fix is not None:
            try:
                ws.write_files(context.fix.files)
            except ValueError as exc:
                return self._fail(f"cannot set up the crashed version: {exc}")
            fix_start = {p: (ws.root / p).read_text(encoding="utf-8") for p in sorted(self._changes(ws, base, before))}
        code, timed_out = self._run(ws.root, invocation, log_path)
        git_after = guard.snapshot([ws.root])
        meddled = guard.changes(git_before, git_after)
        if meddled:
            guard.restore(git_before, git_after)
            return Proposal(self._describe(ws, base, log_path, {}, "changed the repository's git data"), {},
                            f"the command changed the repository's git data ({', '.join(meddled[:4])}); undone")
        if timed_out:
            return self._fail(f"the command timed out after {self.settings.timeout_seconds:g}s and was killed "
                              f"(log: {log_path})")
        if code != 0:
            return self._fail(f"the command exited with code {code} (log: {log_path})")
        changes = self._changes(ws, base, before)
        tracked = set(ws.names_at(base))
        extra = sorted(p for p, status in changes.items() if status == "A" and p not in tracked and not ws.is_editable(p))
        for path in extra:  # new files that are not editable: the CLI's own (history, caches) or notes, left out
            del changes[path]
        noted = [p for p in extra if not self._is_own(p)]
        if noted:
            self.last_note = f"new files that are not editable were left out of the proposal: {', '.join(noted[:5])}"
        foreign = sorted(p for p in changes if not ws.is_editable(p))
        if foreign:
            return Proposal(self._describe(ws, base, log_path, {}, f"edited {', '.join(foreign[:3])}"), {},
                            f"the command changed files that are not editable: {', '.join(foreign)}")
        deleted = sorted(p for p, status in changes.items() if status == "D")
        if deleted:
            return self._fail(f"the command deleted {', '.join(deleted)}; deleting files cannot be proposed")
        try:
            files = {p: (ws.root / p).read_text(encoding="utf-8") for p in sorted(changes)}
        except (OSError, UnicodeDecodeError) as exc:
            return self._fail(f"cannot read the edited files: {exc}")
        if not files:
            return self._fail("the command changed no file")
        if context.fix is not None and files == fix_start:
            return self._fail("the command made no edit to the crashed version: the fix is given up")
        return Proposal(self._describe(ws, base, log_path, files), files)

    def _describe(self, ws: Workspace, base: str, log_path: Path, files: dict[str, str], otherwise: str = "") -> str:
        """The description, in order: a `DESCRIPTION:` line of the output, the CLI's own commit message, a
        one-line summary of the diff. Never a line of edit syntax."""
        message = ws.git("log", "-1", "--format=%s", f"{base}..HEAD", check=False).strip()
        original = {p: ws.tree_files(base, [p]).get(p, b"").decode("utf-8", "replace") for p in files}
        return (described(read_output(log_path)) or (_clean(message) if not is_edit_syntax(message) else "")
                or summarize_diff(original, files) or otherwise or "no change")

    def check(self) -> None:
        """Before the baseline: the CLI's program must exist (and, for a preset, a model and a key)."""
        if self.preset is not None:
            self.preset.check(self.settings)
            return
        words = shlex.split(self.settings.command or "")
        program = next((w for w in words if "=" not in w.split("/")[0]), "")  # skip VAR=value prefixes
        if program and shutil.which(program) is None and not Path(program).exists():
            raise UsageError(f"the command agent's program `{program}` is not installed or not on PATH")

    # -- helpers ------------------------------------------------------------------------------------------------

    def _fail(self, why: str) -> None:
        self.last_error = why
        return None

    @staticmethod
    def _editable(context: Context, root: Path) -> list[str]:
        """The editable globs: from the context, else the workspace's config, else the editable files' names."""
        if context.editable:
            return list(context.editable)
        try:
            return list(load_config(root).editable)
        except UsageError:
            return sorted(context.files)

    @staticmethod
    def _next_paths(root: Path) -> tuple[Path, Path]:
        folder = root / PROMPT_DIR
        folder.mkdir(parents=True, exist_ok=True)
        n = 1 + max((int(p.stem) for p in folder.iterdir() if p.stem.isdigit()), default=0)
        return folder / f"{n}.md", folder / f"{n}.log"

    def _state_dir(self, root: Path) -> Path:
        """A preset CLI's own folder (its history, config, sessions), kept under .autoresearch/, outside the task."""
        folder = root / STATE_DIR / "cli" / self.name
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _is_own(self, path: str) -> bool:
        from fnmatch import fnmatch

        return self.preset is not None and any(fnmatch(path, glob) for glob in self.preset.own_files)

    def _launch(self, invocation: Invocation) -> tuple[list[str] | str, dict[str, str], bool]:
        """The preset's argv, or the user's command for `sh -c` with `{prompt_file}` filled in."""
        if self.preset is not None:
            launch: Launch = self.preset.build(self.settings, invocation)
            return launch.argv, launch.env, launch.stdin
        command = self.settings.command
        if PLACEHOLDER not in command:
            return command, {}, True
        return command.replace(PLACEHOLDER, shlex.quote(str(invocation.prompt_file))), {}, False

    def _run(self, root: Path, invocation: Invocation, log_path: Path) -> tuple[int | None, bool]:
        """Run the CLI in its own process group; kill the group at the time limit. Returns (exit code, timed out)."""
        command, extra_env, use_stdin = self._launch(invocation)
        env = command_env({"AUTORESEARCH_PROMPT_FILE": str(invocation.prompt_file), **extra_env})
        timed_out = False
        stdin_path = invocation.prompt_file if use_stdin else os.devnull
        with open(log_path, "wb") as log, open(stdin_path, "rb") as stdin:
            try:
                proc = subprocess.Popen(command, shell=isinstance(command, str), cwd=root, env=env, stdin=stdin,
                                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            except OSError as exc:
                log.write(f"cannot start {command[0] if isinstance(command, list) else command}: {exc}\n".encode())
                return 127, False
            try:
                proc.wait(timeout=self.settings.timeout_seconds)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:  # a timeout, Ctrl-C, or children the CLI left behind: the whole group goes
                if proc.poll() is None or group_alive(proc.pid):
                    kill_group(proc.pid, self.kill_grace, proc)
                proc.wait()
        return (None if timed_out else proc.returncode), timed_out

    @staticmethod
    def _untracked(ws: Workspace) -> set[str]:
        out = ws.git("ls-files", "--others", "--exclude-standard", "-z")
        return {p for p in out.split("\0") if p and not _is_state(p)}

    def _changes(self, ws: Workspace, base: str, before: set[str]) -> dict[str, str]:
        """Path -> status letter (A, M, D, T) of everything that differs from `base`, commits the CLI made included."""
        fields = ws.git("diff", "--name-status", "--no-renames", "-z", base).split("\0")
        changes = {path: status[:1] for status, path in zip(fields[0::2], fields[1::2]) if path and not _is_state(path)}
        changes.update({p: "A" for p in self._untracked(ws) - before})
        return changes


def _leftovers(repo: Workspace) -> set[str]:
    """Untracked files of the user's checkout, ignored ones too (outside .autoresearch/)."""
    out = repo.git("status", "--porcelain", "--ignored", "--untracked-files=all", "-z")
    return {e[3:] for e in out.split("\0") if e[:2] in ("??", "!!") and not _is_state(e[3:])}


def _is_state(path: str) -> bool:
    return path == STATE_DIR or path.startswith(STATE_DIR + "/")


def read_output(log_path: Path) -> str:
    with open(log_path, "rb") as f:
        f.seek(max(0, os.path.getsize(log_path) - OUTPUT_TAIL_BYTES))
        return f.read().decode("utf-8", errors="replace")


def described(output: str) -> str:
    """The last `DESCRIPTION:` line's text, as one line of at most 200 characters; "" when there is none."""
    lines = [_ANSI.sub("", line).strip() for line in output.splitlines()]
    for line in reversed(lines):
        if "DESCRIPTION:" in line:
            text = _clean(line.rsplit("DESCRIPTION:", 1)[1])
            if text and not text.startswith("<") and not is_edit_syntax(text):  # not the prompt's template echoed
                return text
    return ""


def is_edit_syntax(text: str) -> bool:
    """Whether a line is part of an edit (a SEARCH/REPLACE marker, a patch or diff header, a fence)."""
    return text.lstrip().startswith(EDIT_SYNTAX)


def summarize_diff(before: dict[str, str], after: dict[str, str]) -> str:
    """One line saying what changed: `train.py: LR = 0.1 → LR = 0.2` for a one-line change, else the counts."""
    parts = []
    for path in sorted(after):
        old, new = before.get(path, "").splitlines(), after[path].splitlines()
        removed = [line for line in old if line not in new]
        added = [line for line in new if line not in old]
        if len(removed) == 1 and len(added) == 1:
            parts.append(f"{path}: {removed[0].strip()} → {added[0].strip()}")
        elif added or removed:
            parts.append(f"{path}: +{len(added)} −{len(removed)} lines")
    return _clean("; ".join(parts))


def _clean(text: str) -> str:
    text = " ".join(text.split()).strip("*_` ")
    return text[:MAX_DESCRIPTION].rstrip()
