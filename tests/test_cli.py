"""The CLI end to end through real subprocesses: init and its refusals, prepare, config errors, training, demo."""

import math
import os
import subprocess
import sys

import pandas as pd
import pytest

from autoresearch.summary import parse_summary

TEMPLATE_FILES = {"prepare.py", "train.py", "evaluate.py", "program.md", "autoresearch.toml", ".gitignore"}


def cli(*args, cwd=None, env=None, timeout=240):
    return subprocess.run([sys.executable, "-m", "autoresearch", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def git(cwd, *args):
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("autoresearch: error:")
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture
def kjv_env(kjv_cache):
    return {**os.environ, "AUTORESEARCH_CACHE": str(kjv_cache)}


def test_init_creates_a_committed_workspace(tmp_path):
    ws = tmp_path / "ws"
    result = cli("init", str(ws), "--template", "gpt")
    assert result.returncode == 0, result.stderr
    assert {p.name for p in ws.iterdir()} - {".git"} == TEMPLATE_FILES
    assert len(git(ws, "log", "--oneline").splitlines()) == 1
    assert git(ws, "status", "--porcelain") == ""
    assert set(git(ws, "ls-files").split()) == TEMPLATE_FILES


def test_gitignore_leaves_ledger_state_and_logs_untracked(tmp_path):
    ws = tmp_path / "ws"
    assert cli("init", str(ws)).returncode == 0
    (ws / ".autoresearch" / "runs" / "1").mkdir(parents=True)
    for name in ("results.tsv", ".autoresearch/journal.sqlite", ".autoresearch/runs/1/run.log", "run.log"):
        (ws / name).write_text("x")
    assert git(ws, "status", "--porcelain") == ""


def test_init_into_an_empty_existing_folder_works(tmp_path):
    (tmp_path / "empty").mkdir()
    assert cli("init", str(tmp_path / "empty")).returncode == 0


def test_init_refuses_a_non_empty_folder_and_leaves_it_alone(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "notes.txt").write_text("mine")
    assert_one_line_error(cli("init", str(ws)), "not empty")
    assert [p.name for p in ws.iterdir()] == ["notes.txt"]


def test_init_refuses_an_unknown_template(tmp_path):
    assert_one_line_error(cli("init", str(tmp_path / "ws"), "--template", "nope"), "unknown template 'nope'", "gpt")
    assert not (tmp_path / "ws").exists()


def test_init_refuses_when_git_is_missing(tmp_path):
    env = {**os.environ, "PATH": str(tmp_path / "empty-bin")}
    assert_one_line_error(cli("init", str(tmp_path / "ws"), env=env), "git is not installed")
    assert not (tmp_path / "ws").exists()


def test_init_dataset_option_sets_the_locked_dataset(tmp_path):
    ws = tmp_path / "ws"
    assert cli("init", str(ws), "--dataset", "climbmix").returncode == 0
    assert 'DATASET = "climbmix"' in (ws / "prepare.py").read_text()


def test_prepare_outside_a_workspace_is_a_one_line_error(tmp_path):
    assert_one_line_error(cli("prepare", cwd=tmp_path), "no autoresearch.toml")


@pytest.mark.parametrize(
    "edit, fragment",
    [
        (lambda t: "surprise = 1\n" + t, "unknown key 'surprise'"),
        (lambda t: t + "\nsurprise = 1\n", "unknown key 'agent.tune.DEVICE_BATCH_SIZE.surprise'"),
        (lambda t: t.replace('direction = "minimize"', 'direction = "down"'), "'metric.direction'"),
        (lambda t: t.replace("timeout_factor = 2.0", 'timeout_factor = "long"'), "'budget.timeout_factor'"),
        (lambda t: t.replace('run = "python train.py"', ""), "missing key 'commands.run'"),
        (lambda t: t.replace('"prepare.py", ', '"missing.py", '), "missing.py"),
        (lambda t: t.replace("[metric]", "[metric"), "not valid TOML"),
    ],
)
def test_a_bad_config_is_one_line_naming_the_key(tmp_path, edit, fragment):
    ws = tmp_path / "ws"
    assert cli("init", str(ws)).returncode == 0
    toml = ws / "autoresearch.toml"
    toml.write_text(edit(toml.read_text()))
    assert_one_line_error(cli("prepare", cwd=ws), fragment)


def test_init_prepare_train_prints_a_finite_val_bpb(tmp_path, kjv_env):
    ws = tmp_path / "ws"
    assert cli("init", str(ws)).returncode == 0
    prepared = cli("prepare", cwd=ws, env=kjv_env)
    assert prepared.returncode == 0, prepared.stderr
    assert "Ready to train." in prepared.stdout
    run = subprocess.run([sys.executable, "train.py"], cwd=ws, capture_output=True, text=True, timeout=240,
                         env={**kjv_env, "AUTORESEARCH_TIME_BUDGET": "10", "AUTORESEARCH_SEED": "1"})
    assert run.returncode == 0, run.stderr
    summary = parse_summary(run.stdout)
    for key in ("val_bpb", "training_seconds", "total_seconds", "peak_vram_mb", "mfu_percent", "total_tokens_M", "num_steps", "num_params_M", "depth"):
        assert key in summary, key
    assert math.isfinite(summary["val_bpb"]) and 0 < summary["val_bpb"] < 8
    assert 10 <= summary["training_seconds"] < 20
    assert summary["num_steps"] > 2


def test_train_without_prepared_data_says_what_to_run(tmp_path):
    ws = tmp_path / "ws"
    assert cli("init", str(ws)).returncode == 0
    env = {**os.environ, "AUTORESEARCH_CACHE": str(tmp_path / "empty-cache")}
    run = subprocess.run([sys.executable, "train.py"], cwd=ws, capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode != 0
    assert run.stderr.strip().splitlines()[-1].startswith("prepare: no tokenizer")
    assert "autoresearch prepare" in run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.timeout(900)
def test_demo_runs_the_loop_and_refuses_to_clobber(tmp_path, kjv_env):
    demo = tmp_path / "demo"
    result = cli("demo", str(demo), "--budget", "2", "--experiments", "1", env=kjv_env, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "Best val_bpb:" in result.stdout and "results.tsv" in result.stdout
    # results.tsv loads exactly as the anchor's analysis notebook loads it
    table = pd.read_csv(demo / "results.tsv", sep="\t")
    assert list(table.columns) == ["commit", "val_bpb", "memory_gb", "status", "description"]
    assert len(table) == 2 and table["status"].iloc[0] == "keep" and table["description"].iloc[0] == "baseline"
    assert math.isfinite(table["val_bpb"].iloc[0]) and table["memory_gb"].iloc[0] > 0
    assert git(demo, "rev-parse", "--abbrev-ref", "HEAD") == "main\n"  # the checkout is never switched
    best = table["commit"].iloc[1] if table["status"].iloc[1] == "keep" else table["commit"].iloc[0]
    assert git(demo, "rev-parse", "autoresearch/demo").startswith(best)
    assert "--budget 2 --max-experiments 20" in result.stdout  # the hint resumes under the same protocol
    report = demo / ".autoresearch" / "report" / "demo"  # the demo ends with its report, inside the state folder
    assert f"Report: {report / 'report.html'}" in result.stdout
    assert (report / "progress.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "baseline" in (report / "report.md").read_text()
    assert_one_line_error(cli("demo", str(demo), "--budget", "2", env=kjv_env), "--force")
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    assert_one_line_error(cli("demo", str(other), "--force", env=kjv_env), "not an autoresearch workspace")
    assert (other / "keep.txt").read_text() == "mine"
