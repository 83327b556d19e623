"""MLflow logging: one MLflow run per recorded experiment, under an MLflow experiment named after the branch."""

from __future__ import annotations

import importlib.util
import math
import os
import queue
import re
import threading
from pathlib import Path

from autoresearch import UsageError
from autoresearch.events import Observer

DEFAULT_STORE = "mlruns"  # in the workspace: mlruns/mlflow.db and mlruns/artifacts/ (git-ignored by the templates)
FLUSH_SECONDS = 60.0  # at the session's end, the longest wait for what is still queued
# A dead tracking server must cost seconds, not MLflow's default minutes of retries (the user's own settings win).
BOUNDED = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
           "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
_STOP = object()


def default_uri(root: Path) -> tuple[str, str]:
    """The local store of a workspace: a SQLite database and an artifact folder under ./mlruns (MLflow 3 keeps
    plain file stores in maintenance mode and refuses them by default)."""
    store = Path(root).resolve() / DEFAULT_STORE
    return f"sqlite:///{store / 'mlflow.db'}", (store / "artifacts").as_uri()


def make_tracker(root: Path, flag: str | None, configured: bool | str, metric_name: str,
                 echo=print) -> "MLflowTracker | None":
    """The tracker `--mlflow [URI]` (flag: None when absent, "" for the default store) or `[tracking] mlflow`
    asks for, or None. Without the extra it is a one-line error."""
    wanted = flag if flag is not None else ("" if configured is True else configured or None)
    if wanted is None:
        return None
    if importlib.util.find_spec("mlflow") is None:
        raise UsageError('MLflow logging needs the extra: pip install -e ".[mlflow]" (or pip install mlflow)')
    if wanted:
        return MLflowTracker(wanted, metric_name, None, echo)
    uri, artifacts = default_uri(root)
    (Path(root) / DEFAULT_STORE).mkdir(exist_ok=True)
    return MLflowTracker(uri, metric_name, artifacts, echo)


def _key(name: str) -> str:
    """A metric or tag name MLflow accepts (letters, digits, _ - . / and spaces)."""
    return re.sub(r"[^\w\-./ ]", "_", name)[:250]


class MLflowTracker(Observer):
    """Logs each recorded experiment from a thread of its own, so that the loop never waits on the tracking
    server. The first failure is one warning line; logging then stops for the session, and the loop goes on."""

    name = "MLflow logging"

    def __init__(self, uri: str, metric_name: str, artifact_location: str | None = None, echo=print):
        self.uri, self.metric_name, self.artifact_location, self.echo = uri, metric_name, artifact_location, echo
        self.queue: queue.Queue = queue.Queue()
        self.logged = 0
        self.failed: str | None = None
        self.experiments: dict[str, str] = {}
        self.client = None
        self.thread = threading.Thread(target=self._work, name="autoresearch-mlflow", daemon=True)
        self.thread.start()

    def experiment_recorded(self, row) -> None:
        if self.failed is None:
            self.queue.put(row)

    def close(self) -> None:
        self.queue.put(_STOP)
        self.thread.join(FLUSH_SECONDS)
        if self.thread.is_alive():
            self.echo(f"warning: MLflow logging to {self.uri} did not finish within {FLUSH_SECONDS:g}s; "
                      "the experiments not logged yet are in the journal (autoresearch export)")
        elif self.logged and self.failed is None:
            self.echo(f"MLflow: {self.logged} experiment(s) logged to {self.uri}")

    def _work(self) -> None:
        while True:
            row = self.queue.get()
            if row is _STOP:
                return
            if self.failed is not None:
                continue
            try:
                self._log(row)
                self.logged += 1
            except Exception as exc:  # noqa: BLE001 - a dead server or a bad URI: one warning, never a stopped loop
                self.failed = f"{type(exc).__name__}: {_first_line(str(exc))}"
                self.echo(f"warning: MLflow logging to {self.uri} failed ({self.failed}); it is off for the rest of "
                          "this session, and the loop goes on (every experiment is in the journal)")

    def _experiment(self, branch: str) -> str:
        if branch not in self.experiments:
            found = self.client.get_experiment_by_name(branch)
            self.experiments[branch] = found.experiment_id if found is not None else \
                self.client.create_experiment(branch, artifact_location=self.artifact_location and
                                              f"{self.artifact_location}/{_key(branch).replace('/', '_')}")
        return self.experiments[branch]

    def _log(self, row) -> None:
        if self.client is None:
            for name, value in BOUNDED.items():
                os.environ.setdefault(name, value)
            from mlflow import MlflowClient

            self.client = MlflowClient(tracking_uri=self.uri)
        from mlflow.entities import Metric, Param, RunTag

        client, ms = self.client, int((row.ended_at or row.started_at) * 1000)
        tags = {"description": row.description, "status": row.status or "running", "reason": row.reason[:5000],
                "agent": row.agent, "strategy": row.strategy or "", "worker": str(row.worker),
                "commit": row.commit_sha or "", "parent_commit": row.parent_commit,
                "parent_id": "" if row.parent_id is None else str(row.parent_id), "trial_ref": row.trial_ref or "",
                "autoresearch.row_id": str(row.id), "mlflow.note.content": row.description}
        run = client.create_run(self._experiment(row.branch), start_time=int(row.started_at * 1000), tags=tags,
                                run_name=f"#{row.id} {row.description}"[:250])
        run_id = run.info.run_id
        numbers, summary = {}, row.summary
        if row.metric is not None and math.isfinite(row.metric):
            numbers[_key(self.metric_name)] = row.metric
        for key, value in summary.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                numbers[_key(f"summary.{key}")] = float(value)
        for key in ("wall_seconds", "experiment_seconds", "propose_seconds", "cost_usd", "input_tokens", "output_tokens"):
            value = getattr(row, key)
            if value is not None:
                numbers[key] = float(value)
        if row.test_metric is not None and math.isfinite(row.test_metric):
            numbers[_key(f"test_{self.metric_name}")] = row.test_metric
        params = [Param("seeds", row.seeds_json), Param("attempt", str(row.attempt))]
        client.log_batch(run_id, metrics=[Metric(k, v, ms, 0) for k, v in numbers.items()], params=params,
                         tags=[RunTag(_key(f"summary.{k}"), v[:5000]) for k, v in summary.items() if isinstance(v, str)][:50])
        client.log_text(run_id, row.diff or "", "diff.patch")
        logs = sorted(Path(row.log_path).parent.glob("*.log")) if row.log_path else []  # its runs' and evaluators'
        for log in logs:
            client.log_artifact(run_id, str(log), "logs")
        if not logs:
            client.log_text(run_id, row.log_tail or "", "log_tail.txt")
        client.set_terminated(run_id, "FINISHED" if row.status in ("keep", "discard") else "FAILED", end_time=ms)


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0][:300]
