"""Log each recorded experiment as one MLflow run, from a background thread that never holds up the loop."""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import queue
import re
import threading
import time
from pathlib import Path

from autoresearch import UsageError
from autoresearch.events import Observer
from autoresearch.ledger import INTERRUPTED, STATE_DIR

DEFAULT = "default"  # `--mlflow` alone, or `mlflow = true`: a local store inside the workspace's .autoresearch/
INSTALL = 'MLflow logging needs the extra `mlflow`: pip install -e ".[mlflow]"'
# MLflow's REST client retries for minutes by default (7 retries with backoff, 120 s per request). With these a
# refused connection fails at once and a server that never answers in about 20 s (two tries), on the logging thread;
# the user's own settings of them win.
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
               "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}  # and no "View run" lines amid the loop's
FLUSH_SECONDS = 60.0  # how long close() waits for queued experiments to be logged (a first local store takes ~10 s)
RUN_STATUS = {"keep": "FINISHED", "discard": "FINISHED", "crash": "FAILED", "timeout": "FAILED", "invalid": "FAILED"}


def available() -> bool:
    try:
        return importlib.util.find_spec("mlflow") is not None
    except (ImportError, ValueError):  # ValueError: a module set to None in sys.modules
        return False


def default_uri(root: Path) -> str:
    """The local store of `--mlflow` alone: an SQLite database under .autoresearch/ (never committed). MLflow 3
    refuses its file store (./mlruns) unless MLFLOW_ALLOW_FILE_STORE is set, and names SQLite as the default."""
    return f"sqlite:///{(Path(root).resolve() / STATE_DIR / 'mlflow' / 'mlflow.db').as_posix()}"


def artifact_location(uri: str) -> str | None:
    """Where a new experiment's artifacts go: next to a local SQLite database (MLflow's own default is ./mlartifacts
    under whatever the current folder is); a server or another database decides for itself."""
    path = uri.removeprefix("sqlite:///").split("?")[0]
    if path == uri or not path or path == ":memory:":
        return None
    return (Path(path).parent / "mlartifacts").resolve().as_uri()


def metric_key(name: str) -> str:
    """A name MLflow takes as a metric key: alphanumerics, `_ - . space`, never a path that resolves elsewhere."""
    return re.sub(r"[^\w.\- ]", "_", str(name)).strip(". ")[:250] or "_"


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _cut(text, limit: int) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _ms(seconds: float | None) -> int | None:
    return int(seconds * 1000) if seconds is not None else None


class MlflowLogger(Observer):
    """One MLflow run per recorded experiment, in the MLflow experiment named after its branch (or `experiment`).
    Rows are queued and logged on a thread of its own; the first failure is one warning and logging stops."""

    name = "MLflow logging"

    def __init__(self, uri: str, metric: str, test_metric: str = "", experiment: str | None = None, echo=print,
                 workspace: Path | None = None, flush_seconds: float = FLUSH_SECONDS):
        if not available():
            raise UsageError(INSTALL)
        self.uri, self.metric, self.experiment, self.echo = uri, metric, experiment, echo
        self.test_metric = test_metric if test_metric and test_metric != metric else f"test_{metric}"
        self.workspace = str(workspace) if workspace else None
        self.flush_seconds = flush_seconds
        self.logged: list[str] = []  # the MLflow run ids, in order
        self.failed = False  # after the first failure (said once), nothing more is logged
        self.closed = False
        self.pending = 0  # rows queued and not yet logged
        self.lock = threading.Lock()
        self.client = None
        self.experiments: dict[str, str] = {}
        for key, value in HTTP_LIMITS.items():
            os.environ.setdefault(key, value)  # read by MLflow at each request; set here, on the main thread
        self.queue: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._work, name="mlflow-logging", daemon=True)
        self.thread.start()

    # -- the loop's side: never waits on MLflow ----------------------------------------------------------------------
    def experiment_recorded(self, row) -> None:
        if not self.failed and not self.closed:
            with self.lock:
                self.pending += 1
            self.queue.put(row)

    def close(self) -> None:
        """Log what is queued, waiting `flush_seconds` at most; what is left then is named in one warning."""
        if self.closed:
            return
        self.closed = True
        self.queue.put(None)
        try:
            self.thread.join(self.flush_seconds)
        except KeyboardInterrupt:  # a second Ctrl-C stops the wait, not the session's clean-up
            pass
        if self.thread.is_alive():
            self._warn(f"warning: {self.name}: {self.pending} experiment(s) not logged to {self.uri} after "
                       f"{self.flush_seconds:g}s; the journal has them")

    # -- the thread's side -------------------------------------------------------------------------------------------
    def _work(self) -> None:
        try:
            import mlflow  # noqa: F401 - imported here: a few seconds, while the baseline trains

            for noisy in ("mlflow.store.db.utils", "alembic"):  # "Creating initial MLflow database tables..."
                logging.getLogger(noisy).setLevel(logging.WARNING)
        except Exception as exc:  # noqa: BLE001 - a broken install is a warning, like a dead server
            self._fail(exc)
        while True:
            row = self.queue.get()
            if row is None:
                return
            try:
                if not self.failed:
                    self._log(row)
            except Exception as exc:  # noqa: BLE001 - logging never stops the loop
                self._fail(exc)
            finally:
                with self.lock:
                    self.pending -= 1

    def _warn(self, text: str) -> None:
        """The first trouble is said once; after it nothing more is logged."""
        with self.lock:
            said, self.failed = self.failed, True
        if not said:
            self.echo(text)

    def _fail(self, exc: Exception) -> None:
        shown = _cut(" ".join(str(exc).split()), 300)
        self._warn(f"warning: {self.name} to {self.uri} failed ({type(exc).__name__}: {shown}); it is switched off "
                   "for the rest of this session (the journal has every experiment)")

    def _experiment_id(self, name: str) -> str:
        if name not in self.experiments:
            from mlflow.exceptions import MlflowException

            found = self.client.get_experiment_by_name(name)
            if found is None:
                try:
                    tags = {"autoresearch.workspace": self.workspace} if self.workspace else None
                    self.experiments[name] = self.client.create_experiment(name, artifact_location(self.uri), tags)
                except MlflowException:  # made at the same moment by another session (another tag, same store)
                    found = self.client.get_experiment_by_name(name)
                    if found is None:
                        raise
            if found is not None:
                if found.lifecycle_stage == "deleted":
                    self.client.restore_experiment(found.experiment_id)
                self.experiments[name] = found.experiment_id
        return self.experiments[name]

    def _log(self, row) -> None:
        from mlflow import MlflowClient
        from mlflow.entities import Metric, Param

        if self.client is None:
            if artifact_location(self.uri):  # a local SQLite file: its folder may not exist yet
                Path(self.uri.removeprefix("sqlite:///").split("?")[0]).parent.mkdir(parents=True, exist_ok=True)
            self.client = MlflowClient(tracking_uri=self.uri)
        client = self.client
        experiment = self._experiment_id(self.experiment or row.branch)
        interrupted = row.reason.startswith(INTERRUPTED)
        tags = {
            "autoresearch.id": row.id, "description": _cut(row.description, 8000), "status": row.status,
            "reason": _cut(row.reason, 8000), "agent": row.agent, "worker": row.worker, "strategy": row.strategy,
            "commit": row.commit_sha, "parent_commit": row.parent_commit, "parent_id": row.parent_id,
            "branch": row.branch, "trial_ref": row.trial_ref, "host": row.owner_host, "workspace": self.workspace,
            "retry_of": row.retry_of, "rebased_from": row.rebased_from, "test_state": row.test_state,
            "mlflow.source.git.commit": row.commit_sha, "mlflow.source.git.branch": row.branch,
            "mlflow.note.content": _cut(f"{row.description}\n\n{row.status}: {row.reason}".strip(), 8000),
        }
        tags = {k: str(v) for k, v in tags.items() if v is not None and v != ""}
        name = _cut(f"#{row.id} {row.description}", 250)
        run = client.create_run(experiment, start_time=_ms(row.started_at), tags=tags, run_name=name)
        run_id = run.info.run_id
        stamp = _ms(row.ended_at) or _ms(time.time())
        metrics: dict[str, float] = {}
        for key, value in (row.summary or {}).items():
            if _number(value) is not None:
                metrics[metric_key(key)] = _number(value)
        measured = {self.metric: row.metric, self.test_metric: row.test_metric, "wall_seconds": row.wall_seconds,
                    "experiment_seconds": row.experiment_seconds, "propose_seconds": row.propose_seconds,
                    "memory_gb": row.memory_gb, "cost_usd": row.cost_usd, "input_tokens": row.input_tokens,
                    "output_tokens": row.output_tokens, "tokens": (row.input_tokens or 0) + (row.output_tokens or 0),
                    "llm_calls": row.llm_calls}
        for key, value in measured.items():  # the journal's own numbers win over a summary key of the same name
            key = metric_key(key)
            metrics.pop(key, None)
            if _number(value) is not None:
                metrics[key] = _number(value)
        batch = [Metric(k, v, stamp, 0) for k, v in metrics.items()]
        batch += [Metric(metric_key(f"{self.metric}_runs"), v, stamp, i) for i, v in enumerate(row.values)
                  if _number(v) is not None]  # each seed's value, by run: the noise behind the mean
        params = {"agent": row.agent, "worker": row.worker, "strategy": row.strategy, "seeds": row.seeds_json,
                  "attempt": row.attempt, "segment": row.segment}
        client.log_batch(run_id, metrics=batch,
                         params=[Param(k, _cut(v, 6000)) for k, v in params.items() if v is not None])
        if row.diff:
            client.log_text(run_id, row.diff, "diff.patch")
        logs = Path(row.log_path).parent if row.log_path and Path(row.log_path).is_file() else None
        if logs is not None:  # the row's run folder: each seed's training log, the evaluator's, the test split's
            for log in sorted(logs.glob("*.log")):
                client.log_artifact(run_id, str(log), "logs")
        elif row.log_tail:
            client.log_text(run_id, row.log_tail, "logs/log_tail.txt")
        status = "KILLED" if interrupted else RUN_STATUS.get(row.status, "FINISHED")
        client.set_terminated(run_id, status, end_time=stamp)
        self.logged.append(run_id)


def make_logger(root: Path, flag: str | None, echo=print) -> MlflowLogger | None:
    """The MLflow observer asked for by `--mlflow [URI]` (`flag`: DEFAULT alone), else by autoresearch.toml's
    [tracking] table; None when neither asks. The flag wins over the table."""
    from autoresearch.config import load_config

    config = load_config(root)
    settings = config.tracking
    wanted = flag if flag is not None else settings.mlflow
    if wanted is False or wanted is None:
        return None
    uri = default_uri(root) if wanted in (True, DEFAULT) else str(wanted)
    if flag is None and uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{(Path(root).resolve() / uri.removeprefix('sqlite:///')).as_posix()}"  # the table's own folder
    logger = MlflowLogger(uri, config.metric.name, config.metric.test_name, settings.experiment, echo,
                          Path(root).resolve())
    view = f"; view it with `mlflow ui --backend-store-uri {uri}`" if not uri.startswith(("http:", "https:")) else ""
    echo(f"MLflow: one run per experiment in {uri}{view}")
    return logger
