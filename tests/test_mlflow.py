"""MLflow logging (the extra `mlflow`): one run per experiment in a real local store; a dead server never stops the loop."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import autoresearch
from autoresearch.agents.base import Proposal
from autoresearch.session import run_session
from tasks import git, make_task
from tasks import journal_rows as rows
from test_loop import ScriptedAgent, edit

mlflow = pytest.importorskip("mlflow")
from mlflow import MlflowClient  # noqa: E402

from autoresearch.tracking import MlflowLogger, default_uri, make_logger  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*noload.*")  # SQLAlchemy's, about MLflow's own store code

SRC = str(Path(autoresearch.__file__).resolve().parents[1])


def cli(*args, cwd, prelude="", timeout=240):
    """`autoresearch ...` in a fresh interpreter of this tree; `prelude` runs first (e.g. to hide mlflow)."""
    code = f"import sys\n{prelude}\nfrom autoresearch.cli import main\nsys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("autoresearch: error:"), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def runs_of(client, experiment_name):
    experiment = client.get_experiment_by_name(experiment_name)
    assert experiment is not None, [e.name for e in client.search_experiments()]
    found = client.search_runs([experiment.experiment_id], max_results=1000)
    return sorted(found, key=lambda r: int(r.data.tags["autoresearch.id"]))


def test_a_session_logs_one_mlflow_run_per_experiment_in_the_workspaces_own_store(tmp_path):
    root = make_task(tmp_path / "ws")
    said = []
    agent = ScriptedAgent(edit("LR = 0.1", "LR = 0.3"), lambda c: Proposal("touch the data", {"prepare.py": "X\n"}),
                          edit("STEPS = 40", "STEPS = 2"))
    logger = make_logger(root, "default", echo=said.append)  # what `--mlflow` alone makes
    run_session(root, tag="t", agent=agent, max_experiments=3, echo=said.append, observers=[logger])
    assert not [s for s in said if "warning" in s], said
    journal = rows(root)
    assert [r["status"] for r in journal] == ["keep", "keep", "invalid", "discard"]

    uri = default_uri(root)
    assert uri == f"sqlite:///{root.resolve()}/.autoresearch/mlflow/mlflow.db" and (root / ".autoresearch/mlflow/mlflow.db").is_file()
    assert any(uri in s and "mlflow ui --backend-store-uri" in s for s in said)
    client = MlflowClient(tracking_uri=uri)
    runs = runs_of(client, "autoresearch/t")  # the experiment is named after the branch
    assert len(runs) == len(journal) == len(logger.logged)
    for run, row in zip(runs, journal):
        tags, metrics = run.data.tags, run.data.metrics
        assert run.info.run_name == f"#{row['id']} {row['description']}"
        assert tags["status"] == row["status"] and tags["description"] == row["description"]
        assert tags["reason"] == row["reason"] if row["reason"] else "reason" not in tags
        assert tags["agent"] == row["agent"] and run.data.params["agent"] == row["agent"]
        assert tags["parent_commit"] == row["parent_commit"]
        assert tags.get("commit") == row["commit_sha"] and tags.get("parent_id") == (str(row["parent_id"]) if row["parent_id"] else None)
        assert run.info.start_time == int(row["started_at"] * 1000) and run.info.end_time == int(row["ended_at"] * 1000)
        assert metrics.get("score") == row["metric"]  # the journal's value (a mean over seeds), absent when not measured
        assert metrics["cost_usd"] == row["cost_usd"] and metrics["tokens"] == 0
        if row["wall_seconds"] is not None:
            assert metrics["wall_seconds"] == pytest.approx(row["wall_seconds"])
        assert run.info.status == ("FAILED" if row["status"] == "invalid" else "FINISHED")
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert ("diff.patch" in artifacts) == bool(row["diff"])
        if row["diff"]:
            path = client.download_artifacts(run.info.run_id, "diff.patch", str(tmp_path / f"dl{row['id']}"))
            assert Path(path).read_text() == row["diff"]
        if row["status"] != "invalid":  # a refused edit never ran: it has no log
            logs = client.download_artifacts(run.info.run_id, "logs", str(tmp_path / f"logs{row['id']}"))
            assert "score:" in (Path(logs) / "run.log").read_text()
    baseline, kept, invalid, discarded = runs
    assert "parent_id" not in baseline.data.tags and kept.data.tags["parent_id"] == str(journal[0]["id"])
    seeds = client.get_metric_history(baseline.info.run_id, "score_runs")  # each baseline seed's value, by step
    assert [m.value for m in sorted(seeds, key=lambda m: m.step)] == __import__("json").loads(journal[0]["values_json"])
    assert len(seeds) >= 2
    assert "score" not in invalid.data.metrics and invalid.data.tags["reason"].startswith("edit refused")
    assert discarded.data.metrics["score"] < kept.data.metrics["score"]
    # The store is the harness's state: never in the user's checkout, never in a trial's commit.
    assert git(root, "status", "--porcelain") == ""
    for row in journal:
        if row["commit_sha"]:
            files = set(git(root, "ls-tree", "-r", "--name-only", row["commit_sha"]).split())
            assert files == {".gitignore", "autoresearch.toml", "prepare.py", "program.md", "train.py"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_dead_tracking_server_is_one_warning_and_the_loop_records_everything(tmp_path):
    def session(root, observers):
        agent = ScriptedAgent(edit("LR = 0.1", "LR = 0.3"))
        said, start = [], time.monotonic()
        run_session(root, tag="t", agent=agent, max_experiments=1, echo=said.append, observers=observers)
        return said, time.monotonic() - start

    _, plain = session(make_task(tmp_path / "plain"), [])
    root = make_task(tmp_path / "ws")
    said = []
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    logger = MlflowLogger(dead, "score", echo=said.append)
    said_too, tracked = session(root, [logger])
    warnings = [s for s in said + said_too if "warning" in s]
    assert len(warnings) == 1 and "MLflow logging" in warnings[0] and dead in warnings[0], said + said_too
    assert "\n" not in warnings[0] and "switched off" in warnings[0]
    assert [r["status"] for r in rows(root)] == ["keep", "keep"]
    assert logger.logged == [] and not logger.thread.is_alive()
    assert tracked < plain + 30, (tracked, plain)


def test_the_tracking_table_turns_it_on_through_the_cli_and_a_bad_value_is_one_line(tmp_path):
    root = make_task(tmp_path / "ws", extra_config='\n[tracking]\nmlflow = true\nexperiment = "toy task"\n')
    result = cli("run", "--workspace", str(root), "--tag", "t", "--agent", "tune", "--max-experiments", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "warning" not in result.stdout + result.stderr, result.stdout + result.stderr
    journal = rows(root)
    client = MlflowClient(tracking_uri=default_uri(root))
    runs = runs_of(client, "toy task")  # [tracking] experiment names it, in place of the branch
    assert [r.data.tags["status"] for r in runs] == [r["status"] for r in journal] and len(runs) == 2
    assert [r.data.metrics.get("score") for r in runs] == [r["metric"] for r in journal]
    assert runs[1].data.tags["agent"] == "tune"
    # The flag wins over the table: another URI, or the table's own default store.
    other = f"sqlite:///{tmp_path / 'other.db'}"
    assert make_logger(root, other, echo=lambda *_: None).uri == other
    assert make_logger(root, None, echo=lambda *_: None).uri == default_uri(root)
    relative = make_task(tmp_path / "rel", extra_config='\n[tracking]\nmlflow = "sqlite:///store/runs.db"\n')
    assert make_logger(relative, None, echo=lambda *_: None).uri == f"sqlite:///{relative.resolve()}/store/runs.db"

    bad = make_task(tmp_path / "bad", extra_config="\n[tracking]\nmlflow = 3\n")
    assert_one_line_error(cli("run", "--workspace", str(bad), cwd=tmp_path), "tracking.mlflow", "tracking URI")
    typo = make_task(tmp_path / "typo", extra_config='\n[tracking]\nurl = "http://x"\n')
    assert_one_line_error(cli("run", "--workspace", str(typo), cwd=tmp_path), "unknown key 'tracking.url'")


def test_mlflow_without_the_extra_is_a_one_line_error(tmp_path):
    root = make_task(tmp_path / "ws")
    hidden = "sys.modules['mlflow'] = None  # as if the extra were not installed"
    result = cli("run", "--workspace", str(root), "--tag", "t", "--mlflow", cwd=tmp_path, prelude=hidden)
    assert_one_line_error(result, 'pip install -e ".[mlflow]"')
    assert not (root / ".autoresearch" / "journal.sqlite").exists()  # refused before anything ran
    on = make_task(tmp_path / "on", extra_config='\n[tracking]\nmlflow = "http://127.0.0.1:5000"\n')
    assert_one_line_error(cli("run", "--workspace", str(on), cwd=tmp_path, prelude=hidden), "mlflow")
