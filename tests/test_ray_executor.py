"""The Ray executor on a real local Ray cluster (2 CPUs, started once for the module): it listens on 127.0.0.1
only, runs two experiments at once, retries a run whose worker was killed, records a run lost twice as a crash,
gives the same records, logs and models as the local Runner, and cancels a run on Ctrl-C; and, on a multi-node
cluster of its own, retries a run whose node died on another node."""

import json
import os
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from autoresearch import UsageError
from autoresearch.config import load_config
from autoresearch.executors.ray_runner import RayRunner, cluster_device, connect, make_ray_runner
from autoresearch.sandbox import bubblewrap_works
from autoresearch.session import build_runner, open_workspace
from autoresearch.trial import Trials
from tasks import HELDOUT_EVALUATE, git

pytest.importorskip("ray", reason='the Ray executor needs Ray: pip install "ray[default]"')  # ray_runner imports it lazily
psutil = pytest.importorskip("psutil")

pytestmark = pytest.mark.xdist_group("ray")  # one cluster, one xdist worker

PREPARE = textwrap.dedent('''\
    """Locked: the data lives in $AUTORESEARCH_CACHE (train.txt for training, val.txt held out); --setup makes it."""
    import os
    import sys
    from pathlib import Path

    CACHE = Path(os.environ["AUTORESEARCH_CACHE"])


    def read_numbers(name):
        return [float(x) for x in (CACHE / name).read_text().split()]


    if __name__ == "__main__" and "--setup" in sys.argv:
        CACHE.mkdir(parents=True, exist_ok=True)
        with open(CACHE / "setup-runs.txt", "a") as f:
            f.write("prepared\\n")
        for name, text in (("train.txt", "4.90 5.10 5.00 5.00\\n"), ("val.txt", "5.20 4.80 5.00 5.10\\n")):
            if not (CACHE / name).exists():
                (CACHE / name).write_text(text)
    if __name__ == "__main__" and "--paths" in sys.argv:
        print(f"hide {CACHE / 'val.txt'}")
        print(f"read {CACHE / 'train.txt'}")
''')
TRAIN = textwrap.dedent('''\
    """Fit one number to the training data by gradient steps, and save it for the locked evaluator."""
    import json
    import os

    import prepare

    STEPS = 3
    # (before training)
    w = 0.0
    data = prepare.read_numbers("train.txt")
    for _ in range(STEPS):
        w -= 0.3 * 2 * sum(w - x for x in data) / len(data)
    print(f"trained {STEPS} steps: w = {w:.6f}")
    # (after training)
    with open(os.path.join(os.environ["AUTORESEARCH_ARTIFACTS"], "model.json"), "w") as f:
        json.dump({"w": w}, f)
    os.makedirs(os.path.join(os.environ["AUTORESEARCH_ARTIFACTS"], "extra"), exist_ok=True)
    with open(os.path.join(os.environ["AUTORESEARCH_ARTIFACTS"], "extra", "steps.txt"), "w") as f:
        f.write(str(STEPS))
    print("---")
    print(f"steps: {STEPS}")
''')
EVALUATE = HELDOUT_EVALUATE
CONFIG = textwrap.dedent('''\
    program = "program.md"
    editable = ["train.py"]
    locked = ["prepare.py", "evaluate.py", "program.md", "autoresearch.toml"]

    [commands]
    setup = "python prepare.py --setup"
    run = "python train.py"
    evaluate = "python evaluate.py"
    test = "python evaluate.py"

    [metric]
    name = "score"
    direction = "maximize"

    [budget]
    seconds = 1
    grace_seconds = 60
    startup_allowance_seconds = 90

    [sandbox]
    mode = "{mode}"
    paths_command = "python prepare.py --paths"
''')
# A run that kills the Ray worker running it (its nearest ancestor named ray::...) on its first KILLS attempts,
# counted in a marker file, leaving a child behind each time (its pid beside the marker), then trains as usual.
KILLER = '''\
import pathlib, signal
marker = pathlib.Path(MARKER)
attempts = marker.read_text().count("x") if marker.exists() else 0
marker.write_text("x" * (attempts + 1))
if attempts < KILLS:
    import subprocess
    child = subprocess.Popen(["sleep", "300"], start_new_session=True)  # left behind by a run that loses its worker
    pathlib.Path(str(marker) + f".child{attempts}").write_text(str(child.pid))
    pid = os.getppid()
    while pid > 1:
        if pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::"):
            os.kill(pid, signal.SIGKILL)
            break
        pid = int(pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    raise SystemExit("killed my Ray worker")
'''
# Two runs that each say they have started, wait for the other (at most 60 s), then take a second: they overlap
# only if they run at the same time.
MEETING = '''\
import pathlib, time
started_at = time.time()
pathlib.Path(MEET, os.environ["AUTORESEARCH_SEED"]).write_text("")
while len(list(pathlib.Path(MEET).iterdir())) < 2 and time.time() < started_at + 60:
    time.sleep(0.05)
time.sleep(1.0)
'''
SLOT = ('print("slot:", os.environ.get("CUDA_VISIBLE_DEVICES"), os.environ["AUTORESEARCH_THREADS"], '
        'os.environ["AUTORESEARCH_SLOT"])\n')
TIMES = 'print(f"started_at: {started_at:.3f}")\nprint(f"ended_at: {time.time():.3f}")\n'


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster of 2 CPUs on 127.0.0.1, warmed up (its workers started), for the whole module."""
    ray = connect(None, num_cpus=2, echo=quiet)

    def pid():  # defined here, so that it goes by value: the workers cannot import this module
        return os.getpid()

    warm = ray.remote(pid)
    ray.get([warm.remote() for _ in range(2)])
    yield ray
    ray.shutdown()


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def workspace(tmp_path: Path, monkeypatch, mode: str = "auto") -> Path:
    """The toy task's workspace, its data in a cache folder the head prepared (as `autoresearch prepare` does)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(cache))
    ws = tmp_path / "ws"
    ws.mkdir()
    for name, text in (("prepare.py", PREPARE), ("train.py", TRAIN), ("evaluate.py", EVALUATE),
                       ("program.md", "Maximize the score.\n"), ("autoresearch.toml", CONFIG.format(mode=mode)),
                       (".gitignore", ".autoresearch/\nresults.tsv\n")):
        (ws / name).write_text(text)
    git(ws, "init", "-q", "-b", "main")
    git(ws, "add", "-A")
    git(ws, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "task")
    cache.mkdir()
    for name, text in (("train.txt", "4.90 5.10 5.00 5.00\n"), ("val.txt", "5.20 4.80 5.00 5.10\n")):
        (cache / name).write_text(text)
    return ws


def commit(ws: Path, message: str, before: str = "", after: str = "", steps: int = 3, end: str = "") -> str:
    """A candidate: train.py with code inserted before or after training, or at its end, committed; its sha."""
    text = TRAIN.replace("STEPS = 3", f"STEPS = {steps}")
    text = text.replace("# (before training)\n", before).replace("# (after training)\n", after) + end
    (ws / "train.py").write_text(text)
    git(ws, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-am", message)
    return git(ws, "rev-parse", "HEAD")


def runners(ws: Path, tmp_path: Path):
    """The local Runner the session builds, the trials of the workspace, and a RayRunner around that Runner."""
    config = load_config(ws)
    repo = open_workspace(ws, config)
    local = build_runner(ws, config, 1, "cpu", echo=quiet, locked_hash=repo.locked_hash_at("HEAD"))
    remote = make_ray_runner(local, config, "cpu", echo=quiet, node_dir=str(tmp_path / "node"))
    return local, remote, Trials(repo, "t")


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_local_cluster_listens_on_127_0_0_1_only_and_talks_over_it(ray_cluster):
    assert {n["NodeManagerAddress"] for n in ray_cluster.nodes()} == {"127.0.0.1"}
    loopback = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}
    listening, talking = [], []
    for process in psutil.Process().children(recursive=True):
        try:
            name, connections = process.name(), process.net_connections(kind="inet")
        except psutil.Error:
            continue
        for c in connections:
            if c.status == psutil.CONN_LISTEN:
                listening.append((name, c.laddr.ip, c.laddr.port))
            elif c.raddr:
                talking.append((name, c.laddr.ip, c.raddr.ip))
    assert any(name.startswith("gcs_server") for name, *_ in listening) and len(listening) >= 3, listening
    assert all(ip in loopback for _, ip, _ in listening), listening
    assert all(local in loopback and peer in loopback for _, local, peer in talking), talking


def test_two_experiments_run_at_once_and_the_node_prepares_its_data_once(ray_cluster, tmp_path, monkeypatch):
    ws = workspace(tmp_path, monkeypatch, mode="none")
    meet = tmp_path / "meet"
    meet.mkdir()
    code = MEETING.replace("MEET", repr(str(meet))) + SLOT
    shas = [commit(ws, f"meet {steps}", before=code, steps=steps, end=TIMES) for steps in (3, 4)]
    _, remote, trials = runners(ws, tmp_path)
    ticks, slot = [], {"CUDA_VISIBLE_DEVICES": "7", "AUTORESEARCH_THREADS": "8", "AUTORESEARCH_SLOT": "worker 1"}
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(remote.train, trials.reopen(i + 1, sha, sha), 42 + i, trials.run_dir(i + 1) / "run.log",
                               on_tick=ticks.append, env=slot) for i, sha in enumerate(shas)]
        runs = [f.result() for f in futures]
    assert [r.failure for r in runs] == [None, None], [r.reason for r in runs]
    assert all(isinstance(r.metric, float) for r in runs) and runs[0].metric != runs[1].metric
    intervals = [(r.out.summary["started_at"], r.out.summary["ended_at"]) for r in runs]
    assert max(start for start, _ in intervals) < min(end for _, end in intervals), intervals  # they overlapped
    assert ticks and all(t > 0 for t in ticks)
    setup_runs = (tmp_path / "cache" / "setup-runs.txt").read_text().splitlines()
    assert setup_runs == ["prepared"]  # once for the node, under its lock, though both runs needed it at once
    for i, run in enumerate(runs):  # the logs and models came back where a local run leaves them
        assert run.out.log_path == trials.run_dir(i + 1) / "run.log" and "trained" in run.out.log_path.read_text()
        # the slot's own variables reach the run; its GPU and thread count give way to the Ray task's (1 CPU, no GPU)
        assert "slot: 7 " not in run.out.log_path.read_text() and " 1 worker 1\n" in run.out.log_path.read_text()
        assert json.loads((trials.run_dir(i + 1) / f"artifacts-seed{42 + i}" / "model.json").read_text())["w"]
    assert not any((tmp_path / "node" / "work").iterdir())  # the node's copies of the trials are gone


def test_a_run_whose_worker_is_killed_is_retried_and_one_lost_twice_is_a_crash(ray_cluster, tmp_path, monkeypatch):
    ws = workspace(tmp_path, monkeypatch, mode="none")  # the run must see its Ray worker to kill it
    once, always = tmp_path / "killed-once", tmp_path / "killed-always"

    def killer(marker, kills):
        return KILLER.replace("MARKER", repr(str(marker))).replace("KILLS", str(kills))

    retried = commit(ws, "kill my worker once", before=killer(once, 1))
    lost = commit(ws, "kill my worker every time", before=killer(always, 99))
    honest = commit(ws, "honest")
    local, remote, trials = runners(ws, tmp_path)
    expected = local.train(trials.reopen(1, honest, honest), 42, trials.run_dir(1) / "run.log")
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(remote.train, trials.reopen(2, retried, retried), 42, trials.run_dir(2) / "run.log")
        second = pool.submit(remote.train, trials.reopen(3, lost, lost), 42, trials.run_dir(3) / "run.log")
        run, gone = first.result(), second.result()
    assert once.read_text() == "xx"  # killed on its first attempt, retried once
    assert run.failure is None and run.metric == expected.metric, run.reason
    assert always.read_text() == "xx"  # two attempts, both lost, and no third
    assert gone.failure == "crash" and gone.reason.startswith("node lost"), gone.reason
    assert gone.metric is None and gone.reason in (trials.run_dir(3) / "run.log").read_text()
    assert (trials.run_dir(3) / "artifacts-seed42").is_dir()
    # what the runs left running ended with their workers: Ray alone would leave a dead worker's children running
    children = [int(p.read_text()) for p in tmp_path.glob("killed-*.child*")]
    assert len(children) == 3
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(alive(pid) for pid in children)


def test_the_records_logs_and_models_match_the_local_runners(ray_cluster, tmp_path, monkeypatch):
    ws = workspace(tmp_path, monkeypatch)
    candidates = [
        git(ws, "rev-parse", "HEAD"),  # the baseline
        commit(ws, "crash", after='raise SystemExit("out of ideas")\n'),
        commit(ws, "plant a module", after='open("json.py", "w").write("x = 1\\n")\n'),
        commit(ws, "print a better score", end='print("score: 0.0")\n'),
    ]
    local, remote, trials = runners(ws, tmp_path)
    assert remote.protection() == {**local.protection(), "executor": "ray"}
    here = [local.train(trials.reopen(i + 1, sha, sha), 42, trials.run_dir(i + 1) / "run.log")
            for i, sha in enumerate(candidates)]
    with ThreadPoolExecutor(2) as pool:
        there = list(pool.map(lambda i: remote.train(trials.reopen(i + 11, candidates[i], candidates[i]), 42,
                                                     trials.run_dir(i + 11) / "run.log"), range(len(candidates))))
    assert [r.failure for r in here] == [None, "crash", "invalid", "invalid"], [r.reason for r in here]
    for i, (a, b) in enumerate(zip(here, there)):
        assert (b.failure, b.reason, b.metric) == (a.failure, a.reason, a.metric), (i, a.reason, b.reason)
        assert b.out.summary == a.out.summary and b.out.returncode == a.out.returncode
        assert b.out.log_tail == a.out.log_tail and b.out.log_path == trials.run_dir(i + 11) / "run.log"
        # logs and models, byte for byte; the loss curve the head's harness records from a local log (curve.json, for
        # early stopping) is not made for a run whose log is written on a node
        local_files = {k: v for k, v in files_of(trials.run_dir(i + 1)).items() if not k.startswith("curve")}
        assert files_of(trials.run_dir(i + 11)) == local_files
        assert b.artifacts == trials.run_dir(i + 11) / "artifacts-seed42"
    assert "artifacts-seed42/extra/steps.txt" in files_of(trials.run_dir(11))  # folders of models too
    # a keep is scored on the hidden split here, on the head, on the models its runs brought back
    scored = remote.score_test(trials.reopen(11, candidates[0], candidates[0]), [42], [there[0].artifacts])
    assert scored == local.score_test(trials.reopen(1, candidates[0], candidates[0]), [42], [here[0].artifacts])
    assert isinstance(scored[0], float) and scored[2] == ""
    assert remote.tampered == []


def test_ctrl_c_cancels_the_run_on_its_node_and_ends_its_processes(ray_cluster, tmp_path, monkeypatch):
    ws = workspace(tmp_path, monkeypatch, mode="none")
    pid_file = tmp_path / "pid"
    sha = commit(ws, "sleep", before=f"open({str(pid_file)!r}, 'w').write(str(os.getpid()))\nimport time\ntime.sleep(120)\n")
    _, remote, trials = runners(ws, tmp_path)

    def tick(_):
        if pid_file.exists() and pid_file.read_text():
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        remote.train(trials.reopen(1, sha, sha), 42, trials.run_dir(1) / "run.log", on_tick=tick)
    pid, deadline = int(pid_file.read_text()), time.monotonic() + 30
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(pid)


def test_a_node_runs_under_the_heads_sandbox_or_not_at_all(ray_cluster, tmp_path, monkeypatch):
    ws = workspace(tmp_path, monkeypatch, mode="none")
    local, remote, trials = runners(ws, tmp_path)
    held = RayRunner(local, ray_cluster, remote.resources, "bwrap", node_dir=str(tmp_path / "node"))  # as a sandboxed head
    head = git(ws, "rev-parse", "HEAD")
    run = held.train(trials.reopen(1, head, head), 42, trials.run_dir(1) / "run.log")
    if bubblewrap_works():
        assert run.failure is None, run.reason
    else:
        assert run.failure == "crash" and "sandboxed with bubblewrap, which cannot run on this node" in run.reason


def test_a_cluster_that_cannot_hold_a_run_and_an_address_that_is_not_one_are_one_line_errors(ray_cluster, tmp_path,
                                                                                             monkeypatch):
    ws = workspace(tmp_path, monkeypatch, mode="none")
    config = load_config(ws)
    local = build_runner(ws, config, 1, "cpu", echo=quiet)
    assert cluster_device(echo=quiet) == "cpu"  # no node has a GPU
    with pytest.raises(UsageError, match="no node of the Ray cluster has 1 CPU.s. and 1 GPU"):
        make_ray_runner(local, config, "cuda", echo=quiet)
    with pytest.raises(UsageError, match="no node of the Ray cluster has 64 CPU"):
        make_ray_runner(local, config, "cpu", cpus=64, echo=quiet)
    with pytest.raises(UsageError, match="is not HOST:PORT"):
        connect("head-node", echo=quiet)
    with pytest.raises(UsageError, match="Ray Client addresses are not supported"):
        connect("ray://head-node:10001", echo=quiet)
    # a fresh process, not connected yet: nothing listens on port 1, and that is said at once, not retried for minutes
    code = ("from autoresearch import UsageError\nfrom autoresearch.executors.ray_runner import connect\n"
            "try:\n    connect('127.0.0.1:1')\nexcept UsageError as exc:\n    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.stdout.startswith("cannot reach the Ray cluster at 127.0.0.1:1: Connection refused"), done.stdout + done.stderr



NODE_DIES = r"""
# A cluster of a head with no CPU and one node; the node dies in the run's first attempt, and a new one joins.
import os, sys, threading, time
from pathlib import Path
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # every node on 127.0.0.1
import pytest
from ray.cluster_utils import Cluster
from autoresearch.executors.ray_runner import connect
from test_ray_executor import commit, runners, workspace

tmp = Path(sys.argv[1])
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
try:
    doomed = cluster.add_node(num_cpus=1)
    connect(cluster.address, echo=lambda *_: None)
    ws = workspace(tmp, pytest.MonkeyPatch(), mode="none")
    marker = tmp / "attempts"
    sha = commit(ws, "slow first attempt", before=(
        f"import pathlib, time\nm = pathlib.Path({str(marker)!r})\nn = len(m.read_text()) if m.exists() else 0\n"
        "m.write_text('x' * (n + 1))\nif n == 0:\n    time.sleep(120)\n"))
    _, remote, trials = runners(ws, tmp)
    done = {}
    worker = threading.Thread(target=lambda: done.update(
        run=remote.train(trials.reopen(1, sha, sha), 42, trials.run_dir(1) / "run.log")), daemon=True)
    worker.start()
    deadline = time.monotonic() + 120
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    cluster.remove_node(doomed)
    cluster.add_node(num_cpus=1)
    worker.join(120)
    run = done["run"]
    print("RESULT", run.failure, run.metric, marker.read_text(), run.reason, flush=True)
finally:
    cluster.shutdown()
"""


def test_a_run_on_a_node_that_dies_is_retried_on_another_node(tmp_path):
    # A cluster of its own (Ray's multi-node test cluster), in a process of its own: one Ray connection a process.
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token"),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    proc = subprocess.Popen([sys.executable, "-c", NODE_DIES, str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=280)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.communicate()
    result = [line for line in out.splitlines() if line.startswith("RESULT")]
    assert result == ["RESULT None -0.1409 xx "], out[-2000:] + err[-3000:]


def test_autoresearch_run_with_the_ray_executor_and_two_workers_end_to_end(ray_cluster, tmp_path, monkeypatch):
    """The session wired to Ray: `run_session(executor="ray", workers=2)` runs the baseline and two candidates at
    once as Ray tasks, records them in the journal like local runs, and says so in each row's protection."""
    from autoresearch.agents.base import Proposal, Usage
    from autoresearch.session import run_session
    from tasks import journal_rows

    class Steps:
        name, spent = "scripted", Usage()

        def __init__(self):
            self.left = [5, 8]

        def propose(self, context):
            if not self.left:
                return None
            steps = self.left.pop(0)
            return Proposal(f"STEPS {steps}", {"train.py": context.files["train.py"].replace("STEPS = 3", f"STEPS = {steps}")})

        def observe(self, result):
            pass

    ws = workspace(tmp_path, monkeypatch)
    lines = []
    run_session(ws, tag="t", agent=Steps(), max_experiments=2, workers=2, executor="ray", echo=lines.append)
    rows = journal_rows(ws)
    assert [r["status"] for r in rows][0] == "keep" and len(rows) >= 3 and all(r["state"] == "done" for r in rows)
    assert {r["description"] for r in rows[1:3]} == {"STEPS 5", "STEPS 8"} and {r["worker"] for r in rows[1:3]} == {0, 1}
    assert all(r["metric"] is not None for r in rows if r["status"] in ("keep", "discard"))
    assert all(json.loads(r["protection_json"])["executor"] == "ray" for r in rows)
    assert any(line.startswith("Workers: 2 (a Ray task, a Ray task)") for line in lines)
    assert (ws / ".autoresearch" / "runs" / str(rows[1]["id"]) / "run.log").is_file()
