"""Run each training run as a Ray task on a cluster's node, sandboxed there as it would be here; the harness stays on the head."""

from __future__ import annotations

import collections
import contextlib
import fcntl
import hashlib
import io
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

from autoresearch import UsageError, __version__
from autoresearch.config import CONFIG_FILE, Config, load_config
from autoresearch.executors.base import RunOutcome
from autoresearch.executors.local import LocalExecutor, kill_marked
from autoresearch.ledger import STATE_DIR
from autoresearch.process import run_streaming
from autoresearch.runner import Run, Runner
from autoresearch.sandbox import INSTALL_HINT, make_sandbox, resolve_protected
from autoresearch.secrets import is_allowed
from autoresearch.slots import THREAD_VARIABLES
from autoresearch.trial import Trial, Trials
from autoresearch.workspace import AUTORESEARCH_IDENTITY, Workspace, git

NODE_DIR = "~/.cache/autoresearch/ray"  # on each node: its prepared-data markers and the runs under way
RUN_KEY = "AUTORESEARCH_RAY_RUN"  # in every process of a run on a node: what a retry finds an earlier attempt's by
RETRIES = 1  # a run whose worker or node is lost is retried once, then recorded as a crash
TICK = 1.0  # seconds between on_tick calls while a run is under way
CANCEL_GRACE = 10.0  # seconds a cancelled run gets to end its processes before its worker is killed
ARCHIVES_KEPT = 32  # commits whose files stay in the object store for the next run of the same commit
SLOT_OWNED = ("CUDA_VISIBLE_DEVICES", *THREAD_VARIABLES)  # a head's device slot: on a node, the task's own share
LOOPBACK = ("127.0.0.1", "localhost", "::1")
# Beside each task on a node: once the Ray worker is gone (killed, cancelled by force, its harness gone), every
# process of the run ends too; Ray itself leaves a dead worker's children running.
WATCHDOG = """
import os, sys, time
from autoresearch.executors.local import kill_marked
worker, marker = int(sys.argv[1]), sys.argv[2]
while os.path.exists(f"/proc/{worker}") and open(f"/proc/{worker}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
    time.sleep(0.5)
kill_marked(marker)
"""


def _ray(loopback: bool):
    """The ray module; with `loopback`, set up so that this node is 127.0.0.1 (Ray otherwise swaps 127.0.0.1 for
    the machine's external address, and its processes talk over that)."""
    if loopback:
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # read when ray is imported, here and by its processes
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
        from ray._private import ray_constants
    except ImportError:
        raise UsageError('--executor ray needs Ray: pip install "autoresearch[ray]" (or "ray[default]")') from None
    if loopback:
        ray_constants.ENABLE_RAY_CLUSTER = False  # in case ray was imported before the variable was set
    return ray


def connect(address: str | None = None, num_cpus: int | None = None, echo=print):
    """Ray, connected: to the cluster at `address` (HOST:PORT of `ray start --head`), or to a new local one that
    listens on, and talks over, 127.0.0.1 only. A connection already made in this process is reused."""
    if address is not None and "://" in address:
        raise UsageError(f"--address {address}: give the HOST:PORT that `ray start --head` printed, and run autoresearch "
                         "on a node of the cluster (Ray Client addresses are not supported)")
    host, _, port = (address or "").rpartition(":")
    if address is not None and (not host or not port.isdigit()):
        raise UsageError(f"--address {address!r} is not HOST:PORT (the address `ray start --head` printed)")
    ray = _ray(address is None or host.strip("[]") in LOOPBACK)
    if ray.is_initialized():
        return ray
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING}  # the runs' output goes to their logs
    if address is None:  # "local": always a new instance, never one someone else started
        ray.init(address="local", num_cpus=num_cpus, _node_ip_address="127.0.0.1", include_dashboard=False, **quiet)
        echo(f"Ray: a local cluster on 127.0.0.1 with {ray.cluster_resources().get('CPU', 0):g} CPU(s)")
        return ray
    try:  # Ray itself would retry an unreachable address for minutes
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as exc:
        raise UsageError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None
    try:
        ray.init(address=address, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        if _refused_token(exc):
            raise UsageError(f"the Ray cluster at {address} wants its token: export RAY_AUTH_MODE=token, with the token "
                             "`ray get-auth-token` prints on its head in ~/.ray/auth_token or RAY_AUTH_TOKEN") from None
        raise UsageError(f"cannot join the Ray cluster at {address}: {str(exc).strip().splitlines()[0]}") from None
    resources = ray.cluster_resources()
    echo(f"Ray: cluster at {address}, {len(ray.nodes())} node(s), {resources.get('CPU', 0):g} CPU(s), "
         f"{resources.get('GPU', 0):g} GPU(s)")
    return ray


def cluster_device(address: str | None = None, echo=print) -> str:
    """"cuda" when a node of the cluster has a GPU, else "cpu": the device the runs get, whatever the head has
    (for the session's budget, seeds and protocol)."""
    ray = connect(address, echo=echo)
    return "cuda" if any(n.get("Alive") and n.get("Resources", {}).get("GPU", 0) >= 1 for n in ray.nodes()) else "cpu"


def _refused_token(exc: BaseException | None) -> bool:
    """Whether a failure to join a cluster came from its token (Ray puts the GCS's error in a message's text)."""
    while exc is not None:
        if type(exc).__name__ == "AuthenticationError" or "InvalidAuthToken" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class RayRunner:
    """The Runner's interface, with each training run (train, the locked evaluator, the checks) done by a Ray task
    on a node. The head's Runner (`local`) keeps the protocol and scores kept candidates on the hidden test split,
    here, on the models the runs bring back; git, the journal and the agent never leave the head."""

    def __init__(self, local: Runner, ray, resources: dict, sandbox_mode: str, passthrough: list[str] = (),
                 node_dir: str = NODE_DIR):
        self.local, self.ray, self.resources = local, ray, dict(resources)
        self.spec = local.spec
        self.sandbox_mode = sandbox_mode  # what every node must run training under: the head's own protection
        self.passthrough = list(passthrough)
        self.node_dir = node_dir
        threads = str(max(1, int(self.resources.get("num_cpus", 1))))
        self.slot_env = {name: threads for name in THREAD_VARIABLES}  # the task's CPUs; Ray gives it its GPU
        self.node_tampered: list[str] = []  # held-out data a run changed on its node
        self._task = ray.remote(_train_on_node).options(max_retries=RETRIES, retry_exceptions=False, **self.resources)
        self._archives: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()
        self._under_way: set = set()

    @property
    def tampered(self) -> list[str]:
        return self.local.tampered + self.node_tampered

    def protection(self) -> dict:
        """The head's protection, which every node is held to (a node that cannot give it runs nothing)."""
        return {**self.local.protection(), "executor": "ray"}

    def score_test(self, trial: Trial, seeds: list[int], artifact_dirs: list[Path], on_process=None):
        return self.local.score_test(trial, seeds, artifact_dirs, on_process)

    def seed_ignored(self, artifact_dirs: list[Path]) -> str:
        return self.local.seed_ignored(artifact_dirs)

    def train(self, trial: Trial, seed: int, log: Path, on_process=None, on_tick=None,
              env: dict[str, str] | None = None) -> Run:
        """One run of the trial with one seed, on a node; its log and saved models land where a local run puts
        them (`log`, and artifacts-seed<seed> beside it). `on_process` is not called: the run's processes are the
        node's, and a watchdog there ends them with the task's Ray worker (which Ray ends with this harness). Of `env` (the worker slot's), the device and thread variables
        give way to the task's own share of its node: Ray's GPU, and its CPUs as the thread count."""
        ray = self.ray
        artifacts = log.parent / f"artifacts-seed{seed}"
        shutil.rmtree(artifacts, ignore_errors=True)
        log.parent.mkdir(parents=True, exist_ok=True)
        request = {
            "version": __version__, "spec": self.spec, "locked_hash": self.local.locked_hash, "tag": trial.tag,
            "trial_id": trial.id, "seed": seed, "log_name": log.name, "sandbox_mode": self.sandbox_mode,
            "node_dir": self.node_dir, "env": self._forwarded(),
            "run_env": {**{k: v for k, v in (env or {}).items() if k not in SLOT_OWNED}, **self.slot_env},
            "key": re.sub(r"[^\w.-]", "_", f"{trial.tag}-{trial.id}-seed{seed}-{os.urandom(4).hex()}"),
        }
        started = time.monotonic()
        ref = self._task.remote(self._archive(trial), request)
        with self._lock:
            self._under_way.add(ref)
        try:
            try:
                while not ray.wait([ref], timeout=TICK)[0]:
                    if on_tick is not None:
                        on_tick(time.monotonic() - started)
            except BaseException:  # Ctrl-C, or the caller's tick failed: the run ends on its node too
                self._cancel(ref)
                raise
            result = ray.get(ref)
        except ray.exceptions.TaskCancelledError:
            raise KeyboardInterrupt from None
        except ray.exceptions.RayError as exc:
            return _failed(log, artifacts, started, self._why(exc))
        finally:
            with self._lock:
                self._under_way.discard(ref)
        if "error" in result:
            return _failed(log, artifacts, started, f"on node {result['host']}: {result['error']}")
        return self._unpack(result, log, artifacts, started)

    def cancel_all(self) -> None:
        """Cancel every run under way (for a harness interrupted in another thread than the runs')."""
        with self._lock:
            refs = list(self._under_way)
        for ref in refs:
            self._cancel(ref)

    def _forwarded(self) -> dict[str, str]:
        """The head's variables that say where the task's data is (AUTORESEARCH_*), and those the config passes
        to runs: the node's processes get them as local ones would."""
        return {k: v for k, v in os.environ.items()
                if (k.startswith("AUTORESEARCH_") and is_allowed(k)) or k in self.passthrough}

    def _archive(self, trial: Trial):
        """The trial's committed files (`git archive` of its commit, read from the repository, never through the
        worktree's .git link), in the object store once per commit."""
        with self._lock:
            ref = self._archives.get(trial.commit)
            if ref is not None:
                self._archives.move_to_end(trial.commit)
                return ref
        repo = trial.tree.at(self.local.checkout) if self.local.checkout else trial.tree
        ref = self.ray.put(repo.git_bytes("archive", "--format=tar", trial.commit))
        with self._lock:
            self._archives[trial.commit] = ref
            while len(self._archives) > ARCHIVES_KEPT:
                self._archives.popitem(last=False)
        return ref

    def _cancel(self, ref) -> None:
        """Stop a run: a KeyboardInterrupt in the task first (its executor ends the run's processes), then the
        worker killed if it is still there after CANCEL_GRACE seconds."""
        ray = self.ray
        try:
            ray.cancel(ref)
            if not ray.wait([ref], timeout=CANCEL_GRACE)[0]:
                ray.cancel(ref, force=True)
        except ray.exceptions.RayError:
            pass

    def _why(self, exc) -> str:
        """The reason of a run Ray could not bring back."""
        errors = self.ray.exceptions
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        if isinstance(exc, errors.OutOfMemoryError):
            return f"out of memory on its node (Ray's memory monitor killed it): {detail}"
        if isinstance(exc, errors.RayTaskError):
            cause = exc.cause if getattr(exc, "cause", None) is not None else exc
            return f"the node's harness failed: {type(cause).__name__}: {(str(cause).strip().splitlines() or [''])[-1][:200]}"
        if isinstance(exc, (errors.WorkerCrashedError, errors.NodeDiedError, errors.LocalRayletDiedError,
                            errors.ObjectLostError, errors.RaySystemError)):
            return (f"node lost: the run's Ray worker or node died on both attempts ({RETRIES + 1}), so it was "
                    f"retried once and then given up: {type(exc).__name__}: {detail}")
        return f"Ray could not run it: {type(exc).__name__}: {detail}"

    def _unpack(self, result: dict, log: Path, artifacts: Path, started: float) -> Run:
        """The node's log files and models written where a local run leaves them; the record pointed at them."""
        try:
            with tarfile.open(fileobj=io.BytesIO(result["files"])) as tar:
                tar.extractall(log.parent, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        except (tarfile.TarError, OSError) as exc:
            return _failed(log, artifacts, started, f"the files it sent back from node {result['host']} could not be "
                                                    f"unpacked: {exc}")
        artifacts.mkdir(exist_ok=True)
        run: Run = result["run"]
        run.out.log_path, run.artifacts = log, artifacts
        with self._lock:
            self.node_tampered += [f"{result['host']}:{path}" for path in result["tampered"]]
        return run


def _failed(log: Path, artifacts: Path, started: float, reason: str) -> Run:
    """A crash record for a run that brought nothing back; its log says why."""
    artifacts.mkdir(parents=True, exist_ok=True)
    text = f"[autoresearch ray] {reason}\n"
    log.write_text(text)
    return Run("crash", reason, None, RunOutcome(None, time.monotonic() - started, False, log, text), artifacts)


def make_ray_runner(local: Runner, config: Config, device: str, address: str | None = None, cpus: float = 1,
                    echo=print, node_dir: str = NODE_DIR, local_cpus: int | None = None) -> RayRunner:
    """A RayRunner around the head's Runner: each run asks for one GPU on CUDA (and `cpus` CPUs), else `cpus` CPUs.
    Without `address`, a local cluster of `local_cpus` CPUs (default: all) on 127.0.0.1."""
    if cpus <= 0:
        raise UsageError(f"a Ray run needs at least some CPU (got {cpus:g})")
    ray = connect(address, local_cpus, echo)
    resources = {"num_cpus": cpus, **({"num_gpus": 1} if device == "cuda" else {})}
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if not any(n.get("CPU", 0) >= cpus and n.get("GPU", 0) >= resources.get("num_gpus", 0) for n in nodes):
        wanted = f"{cpus:g} CPU(s)" + (" and 1 GPU" if device == "cuda" else "")
        raise UsageError(f"no node of the Ray cluster has {wanted} for a run; start nodes that do, or ask for fewer CPUs")
    echo(f"Executor: ray; each run on a node with {cpus:g} CPU(s)" + (" and 1 GPU" if device == "cuda" else "") +
         f", sandboxed there as here ({'bubblewrap' if local.sandbox else 'none'})")
    return RayRunner(local, ray, resources, "bwrap" if local.sandbox else "none", config.sandbox.env, node_dir)


# -- the node's side: runs in a Ray worker ---------------------------------------------------------------------------


def _train_on_node(archive: bytes, request: dict) -> dict:
    """On a node: rebuild the trial's repository from its committed files, prepare the node's data once, and do
    the run with a Runner of the node's own, sandboxed as on the head. Returns the run's record, its files (the
    logs and saved models, as a tar) and the protected data it changed; or {"error": why}."""
    host = socket.gethostname()
    if request["version"] != __version__:
        return {"host": host, "error": f"autoresearch {__version__} is installed here, {request['version']} on the head; "
                                       "install the same version on every node"}
    base = Path(request["node_dir"]).expanduser()
    work = base / "work" / request["key"]
    marker = f"{RUN_KEY}={request['key']}"
    kill_marked(marker)  # what a lost earlier attempt of this run left running here
    shutil.rmtree(work, ignore_errors=True)
    watchdog = subprocess.Popen([sys.executable, "-c", WATCHDOG, str(os.getpid()), marker], start_new_session=True,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with _environment({**request["env"], RUN_KEY: request["key"]}):
            root = _rebuild(archive, work / "checkout")
            config = load_config(root)
            ws = Workspace(root, config.editable, list(dict.fromkeys(config.locked + [CONFIG_FILE])))
            failed = _prepare_node(ws, config, base)
            if failed:
                return {"host": host, "error": failed}
            box = config.sandbox
            try:
                sandbox = make_sandbox(request["sandbox_mode"], root / STATE_DIR, box.network, box.writable, echo=lambda *_: None)
            except UsageError:
                return {"host": host, "error": f"the head's runs are sandboxed with bubblewrap, which cannot run on this "
                                               f"node ({INSTALL_HINT})"}
            protected = resolve_protected(root, box.hide, box.protect, box.paths_command, box.readable)
            runner = Runner(LocalExecutor(passthrough=box.env), request["spec"], sandbox, protected, root,
                            request["locked_hash"])
            commit = ws.head()
            trial = Trials(ws, request["tag"]).reopen(request["trial_id"], commit, commit)
            run = runner.train(trial, request["seed"], trial.run_dir / request["log_name"], env=request["run_env"])
            return {"host": host, "run": run, "files": _pack(trial.run_dir, run.artifacts), "tampered": runner.tampered}
    except UsageError as exc:
        return {"host": host, "error": str(exc)}
    finally:
        watchdog.kill()
        watchdog.wait()
        kill_marked(marker)
        shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def _environment(values: dict[str, str]):
    """`values` in os.environ while a task runs (a Ray worker runs one task at a time), as they were after."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _rebuild(archive: bytes, root: Path) -> Path:
    """A git repository of the committed files, one commit, so the Workspace, Trial and Runner code runs as on the head."""
    root.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(root, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    name, email = AUTORESEARCH_IDENTITY
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A", "-f")  # every committed file, whatever its .gitignore says
    git(root, "-c", f"user.name={name}", "-c", f"user.email={email}", "commit", "-q", "--no-verify", "-m", "the trial's commit")
    return root


def _prepare_node(ws: Workspace, config: Config, base: Path) -> str:
    """The locked setup step (`commands.setup`), once per node and locked files, under a file lock; why it failed, or ''."""
    command = config.commands.setup
    if not command:
        return ""
    forwarded = sorted((k, v) for k, v in os.environ.items() if k.startswith("AUTORESEARCH_") and k != RUN_KEY)
    key = hashlib.sha256(json.dumps([command, ws.locked_hash(), forwarded]).encode()).hexdigest()[:16]
    folder = base / "prepared"
    folder.mkdir(parents=True, exist_ok=True)
    done = folder / f"{key}.done"
    with open(folder / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second run on this node waits here until the first has prepared it
        if done.exists():
            return ""
        code, output = run_streaming(command, ws.root, log_path=folder / f"{key}.log")
        if code != 0:
            last = (output.strip().splitlines() or ["no output"])[-1]
            return f"the setup step `{command}` failed on this node with exit code {code}: {last}"
        done.write_text(f"{command}\n")
    return ""


def _pack(run_dir: Path, artifacts: Path) -> bytes:
    """The run's files as a tar: the logs in its folder and its saved models, regular files and folders only."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in sorted(run_dir.iterdir()):
            if path.is_file() and not path.is_symlink():
                tar.add(path, path.name)
        for top, dirs, names in os.walk(artifacts) if artifacts.is_dir() and not artifacts.is_symlink() else ():
            here = Path(top)
            dirs[:] = [d for d in dirs if not (here / d).is_symlink()]
            tar.add(here, here.relative_to(run_dir).as_posix(), recursive=False)
            for name in names:
                if (here / name).is_file() and not (here / name).is_symlink():
                    tar.add(here / name, (here / name).relative_to(run_dir).as_posix())
    return buffer.getvalue()
