"""MLflow logging on a real session: one MLflow run per experiment in a real local store, read back through the
MLflow client; a dead tracking server warns once and the loop goes on."""

import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("mlflow")
from mlflow import MlflowClient  # noqa: E402

from autoresearch.session import run_session  # noqa: E402
from autoresearch.tracking import default_uri, make_tracker  # noqa: E402
from tasks import git, make_task  # noqa: E402
from tasks import journal_rows as rows  # noqa: E402
from test_loop import ScriptedAgent, edit  # noqa: E402

pytestmark = pytest.mark.xdist_group("mlflow")  # MLflow's first SQLite store migrates its schema: one at a time


def session(root, observers, said, n=3):
    agent = ScriptedAgent(edit("LR = 0.1", "LR = 0.3", "raise the step size"), edit("STEPS = 40", "STEPS = 2", "far fewer steps"),
                          edit("w = np.zeros(3)", "w = np.zeros(3) + undefined_name", "a typo"))
    return run_session(root, tag="t", agent=agent, max_experiments=n, echo=said.append, observers=observers)


def test_every_experiment_is_one_mlflow_run_under_the_branchs_experiment(tmp_path):
    root = make_task(tmp_path / "ws")
    said = []
    tracker = make_tracker(root, "", False, "score", said.append)  # --mlflow alone: the workspace's ./mlruns
    session(root, [tracker], said)
    assert f"MLflow: 4 experiment(s) logged to {tracker.uri}" in said
    uri, _ = default_uri(root)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("autoresearch/t")
    runs = {int(r.data.tags["autoresearch.row_id"]): r for r in client.search_runs([experiment.experiment_id], max_results=100)}
    journal = rows(root)
    assert sorted(runs) == [r["id"] for r in journal]  # one run per experiment, the baseline included
    for r in journal:
        run = runs[r["id"]]
        tags = run.data.tags
        assert run.info.run_name == f"#{r['id']} {r['description']}"
        assert (tags["status"], tags["description"], tags["commit"], tags["parent_commit"]) == \
            (r["status"], r["description"], r["commit_sha"], r["parent_commit"])
        assert tags["parent_id"] == ("" if r["parent_id"] is None else str(r["parent_id"]))
        if r["metric"] is None:
            assert "score" not in run.data.metrics
        else:
            assert run.data.metrics["score"] == pytest.approx(r["metric"])
        assert run.data.metrics["wall_seconds"] == pytest.approx(r["wall_seconds"])
        assert run.info.status == ("FINISHED" if r["status"] in ("keep", "discard") else "FAILED")
        files = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert "diff.patch" in files
        if r["status"] == "invalid" or r["commit_sha"] is None:
            assert "log_tail.txt" in files
        else:
            logs = {a.path for a in client.list_artifacts(run.info.run_id, "logs")}
            assert "logs/run.log" in logs, logs
        diff = client.download_artifacts(run.info.run_id, "diff.patch", str(tmp_path / f"dl{r['id']}"))
        assert open(diff).read() == r["diff"]
    kept = [r for r in journal if r["status"] == "keep"][-1]
    assert runs[kept["id"]].data.metrics["summary.score"] == pytest.approx(kept["metric"])  # the run's summary keys
    assert "summary.all_runs_training_seconds" in runs[kept["id"]].data.metrics
    # the store is beside the user's files but never in git's way
    assert (root / "mlruns" / "mlflow.db").is_file()
    assert "mlruns" not in git(root, "ls-tree", "-r", "--name-only", "autoresearch/t")


def test_a_dead_tracking_server_warns_once_and_the_loop_goes_on(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = make_task(tmp_path / "ws")
    said = []
    started = time.monotonic()
    tracker = make_tracker(root, f"http://127.0.0.1:{port}", False, "score", said.append)
    session(root, [tracker], said)
    took = time.monotonic() - started
    warnings = [line for line in said if "MLflow logging" in line and "failed" in line]
    assert len(warnings) == 1 and f"127.0.0.1:{port}" in warnings[0] and "the loop goes on" in warnings[0]
    assert [r["status"] for r in rows(root)] == ["keep", "keep", "discard", "crash"]  # every experiment recorded
    assert took < 120  # bounded retries: seconds, not MLflow's default minutes of backoff


def cli(*args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "autoresearch", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)


def test_tracking_in_the_config_turns_it_on_and_a_bad_value_is_one_line(tmp_path):
    root = make_task(tmp_path / "ws", extra_config="\n[tracking]\nmlflow = true\n")
    out = cli("run", "--tag", "c", "--agent", "perturb", "--max-experiments", "1", cwd=root)
    assert out.returncode == 0, out.stderr
    client = MlflowClient(tracking_uri=default_uri(root)[0])
    experiment = client.get_experiment_by_name("autoresearch/c")
    assert len(client.search_runs([experiment.experiment_id])) == len(rows(root)) == 2
    bad = make_task(tmp_path / "bad", extra_config="\n[tracking]\nmlflow = 3\n")
    out = cli("run", "--tag", "c", "--max-experiments", "1", cwd=bad)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and "tracking.mlflow" in out.stderr


def test_mlflow_without_the_extra_is_a_one_line_error(tmp_path):
    root = make_task(tmp_path / "ws")
    code = ("import sys; sys.modules['mlflow'] = None; import importlib.util as u; "
            "u.find_spec = (lambda f: (lambda name, *a: None if name == 'mlflow' else f(name, *a)))(u.find_spec); "
            "from autoresearch.cli import main; sys.exit(main(sys.argv[1:]))")
    out = subprocess.run([sys.executable, "-c", code, "run", "--tag", "x", "--mlflow"], cwd=root, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == ['autoresearch: error: MLflow logging needs the extra: pip install -e ".[mlflow]" (or pip install mlflow)']
    assert not (root / ".autoresearch").exists()  # nothing started
