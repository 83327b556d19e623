"""K workers, the parallel rule and the strategies, with a real git repo and real subprocesses on small tasks."""

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from autoresearch import UsageError
from autoresearch.agents.base import Proposal, Usage
from autoresearch.rebase import merge_onto
from autoresearch.session import run_session
from autoresearch.slots import make_slots
from autoresearch.workspace import Workspace
from tasks import git, make_task
from test_loop import ScriptedAgent
from tasks import journal_rows as rows

ONE_SEED = "\n[decide]\nseeds = 1\nbaseline_seeds = 1\n"

# The score is highest at LR = 0.5 and W = 2; DELAY is how long the run sleeps, so a test sets the order in which
# runs finish. The run prints when it started and ended (the harness's journal keeps the summary).
SCORE_TASK = textwrap.dedent('''\
    """A deterministic score: -(LR - 0.5)^2 - (W - 2)^2, after sleeping DELAY seconds."""
    import os
    import time

    LR, DELAY = 0.1, 0.1
    # a few lines between the two constants, so that changes to each merge cleanly
    #
    #
    #
    W = 0.0
    started = time.time()
    time.sleep(DELAY)
    print("---")
    print(f"score: {-(LR - 0.5) ** 2 - (W - 2) ** 2:.6f}")
    print(f"started: {started:.3f}")
    print(f"ended: {time.time():.3f}")
    print(f"threads: {os.environ.get('AUTORESEARCH_THREADS', '0')}")
''')


def sub(pattern, replacement, description):
    def step(context):
        return Proposal(description, {"train.py": re.sub(pattern, replacement, context.files["train.py"], count=1)})
    return step


def run(root, agent, n, **kw):
    return run_session(root, tag="t", agent=agent, max_experiments=n, echo=lambda *_: None, **kw)


def branch_file(root) -> str:
    return git(root, "show", "autoresearch/t:train.py")


def summary(row) -> dict:
    return json.loads(row["summary_json"])


def test_slots_split_the_cores_or_give_one_gpu_each(monkeypatch):
    monkeypatch.setattr("autoresearch.slots.usable_cores", lambda: 8)
    slots = make_slots(4, "cpu")
    assert [s.env["AUTORESEARCH_THREADS"] for s in slots] == ["2"] * 4 and slots[0].env["OMP_NUM_THREADS"] == "2"
    assert make_slots(1, "cpu")[0].env == {}  # one worker: the run's environment is left as it is
    gpus = make_slots(2, "cuda", "3,5")
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in gpus] == ["3", "5"] and gpus[1].index == 1
    with pytest.raises(UsageError, match="needs 3 GPUs"):
        make_slots(3, "cuda", "0,1")
    with pytest.raises(UsageError, match="at least 1"):
        make_slots(0, "cpu")


def test_merge_onto_carries_a_change_to_a_newer_best(tmp_path):
    root = make_task(tmp_path / "ws", train=SCORE_TASK)
    ws = Workspace(root, ["train.py"], ["prepare.py"])
    base = git(root, "rev-parse", "HEAD")

    def commit(text):
        git(root, "checkout", "-q", "--detach", base)
        (root / "train.py").write_text(text)
        git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "x")
        return git(root, "rev-parse", "HEAD")

    best = commit(SCORE_TASK.replace("LR, DELAY = 0.1, 0.1", "LR, DELAY = 0.3, 0.1"))
    other_line = commit(SCORE_TASK.replace("W = 0.0", "W = 2.0"))
    same_line = commit(SCORE_TASK.replace("LR, DELAY = 0.1, 0.1", "LR, DELAY = 0.5, 0.1"))
    git(root, "checkout", "-q", "main")
    files, conflicts = merge_onto(ws, base, best, other_line)
    assert conflicts == 0 and "LR, DELAY = 0.3, 0.1" in files["train.py"] and "W = 2.0" in files["train.py"]
    files, conflicts = merge_onto(ws, base, best, same_line)
    assert conflicts == 1 and "LR, DELAY = 0.5, 0.1" in files["train.py"]  # the candidate's side
    assert merge_onto(ws, base, best, best) == ({}, 0)  # the best already holds it


def test_two_workers_run_at_once_each_with_its_share_of_the_cores(tmp_path):
    root = make_task(tmp_path / "ws", train=SCORE_TASK.replace("LR, DELAY = 0.1, 0.1", "LR, DELAY = 0.1, 2.0"),
                     extra_config=ONE_SEED)
    agent = ScriptedAgent(sub(r"W = 0.0", "W = 1.0", "W 1"), sub(r"LR, DELAY = 0.1", "LR, DELAY = 0.2", "LR 0.2"))
    run(root, agent, 2, workers=2)
    records = rows(root)
    a, b = records[1], records[2]
    assert {a["worker"], b["worker"]} == {0, 1}
    first, second = sorted((summary(a), summary(b)), key=lambda s: s["started"])
    assert second["started"] < first["ended"]  # the two runs overlapped in time
    cores = max(1, len(os.sched_getaffinity(0)) // 2)
    assert summary(a)["threads"] == summary(b)["threads"] == float(cores)
    assert summary(records[0])["threads"] == float(cores)  # the baseline ran alone, on the first slot


@pytest.mark.parametrize("order", ["better_last", "better_first"])
def test_two_improving_candidates_leave_the_branch_at_the_better_one_in_either_order(tmp_path, order):
    """B (LR 0.3) and C (LR 0.5, the better) both beat their parent and edit the same line. Whichever finishes
    first is kept; the other's parent is then no longer the best. If C finishes last it is re-based onto B (the
    conflict goes to C's side) and measured again; if B finishes last it does not beat C and is recorded so."""
    slow, fast = "3.0", "0.2"
    b_delay, c_delay = (fast, slow) if order == "better_last" else (slow, fast)
    root = make_task(tmp_path / "ws", train=SCORE_TASK, extra_config=ONE_SEED)
    agent = ScriptedAgent(sub(r"LR, DELAY = .*", f"LR, DELAY = 0.3, {b_delay}", "B: LR 0.3"),
                          sub(r"LR, DELAY = .*", f"LR, DELAY = 0.5, {c_delay}", "C: LR 0.5"))
    run(root, agent, 2, workers=2)
    records = {r["description"]: r for r in rows(root)}
    assert "LR, DELAY = 0.5" in branch_file(root)
    best_score = max(r["metric"] for r in records.values() if r["status"] == "keep")
    assert best_score == pytest.approx(-(2.0 ** 2))
    if order == "better_last":
        assert records["B: LR 0.3"]["status"] == "keep"
        c, rebased = records["C: LR 0.5"], records["C: LR 0.5 (re-based onto #2)"]
        assert c["status"] == "discard" and "re-based onto #2" in c["reason"] and "1 conflicting hunk" in c["reason"]
        assert rebased["status"] == "keep" and rebased["rebased_from"] == c["id"] and rebased["parent_id"] == 2
        assert git(root, "rev-parse", f"{rebased['commit_sha']}^") == records["B: LR 0.3"]["commit_sha"]
    else:
        assert records["C: LR 0.5"]["status"] == "keep"
        b = records["B: LR 0.3"]
        assert b["status"] == "discard" and "replaces all of #3's" in b["reason"]
        assert not any("re-based onto" in d for d in records)
    # Every kept change is an ancestor of the branch: none was dropped by a later keep.
    for r in records.values():
        if r["status"] == "keep":
            assert subprocess.run(["git", "merge-base", "--is-ancestor", r["commit_sha"], "autoresearch/t"], cwd=root).returncode == 0


def test_a_stale_candidate_with_a_separate_change_is_rebased_and_both_changes_are_kept(tmp_path):
    root = make_task(tmp_path / "ws", train=SCORE_TASK, extra_config=ONE_SEED)
    agent = ScriptedAgent(sub(r"LR, DELAY = .*", "LR, DELAY = 0.5, 0.2", "LR 0.5"),
                          sub(r"W = 0.0", "W = 2.0\ntime.sleep(2.5)", "W 2"))
    run(root, agent, 2, workers=2)
    records = {r["description"]: r for r in rows(root)}
    stale = records["W 2"]
    assert stale["status"] == "discard" and "re-based onto #2" in stale["reason"] and "conflicting" not in stale["reason"]
    rebased = records["W 2 (re-based onto #2)"]
    assert rebased["status"] == "keep" and rebased["metric"] == pytest.approx(0.0)
    assert rebased["agent"] == "scripted (re-based)" and rebased["attempt"] == 0
    text = branch_file(root)
    assert "LR, DELAY = 0.5, 0.2" in text and "W = 2.0" in text
    # results.tsv holds every finished row once, in order, as the journal does.
    table = (root / "results.tsv").read_text().splitlines()[1:]
    assert [line.split("\t")[3] for line in table] == [r["status"] for r in rows(root)]


STEP_TASK = textwrap.dedent('''\
    """A score with a valley: K = 1 is worse than K = 0, but K = 2 is far better. K = 3 crashes unless SAFE."""
    K = 0
    SAFE = 0
    if K == 3 and not SAFE:
        raise SystemExit("K = 3 needs SAFE")
    print("---")
    print(f"score: {dict([(-1, 0.5), (0, 1.0), (1, 0.8), (2, 2.0), (3, 2.5)]).get(K, 0.0):.6f}")
''')


class StepAgent:
    """A local search: from the node it is shown it proposes K+1, then K-1 (never the same file twice); a crash is
    fixed by setting SAFE. It keeps every context, so the test can see which node it was asked to edit."""

    name = "step"

    def __init__(self):
        self.spent, self.proposed, self.contexts = Usage(), set(), []

    def propose(self, context):
        self.contexts.append(context)
        text = (context.fix.files if context.fix else context.files)["train.py"]
        if context.fix is not None:
            return Proposal("SAFE 1", {"train.py": text.replace("SAFE = 0", "SAFE = 1")})
        k = int(re.search(r"^K = (-?\d+)", text, re.M).group(1))
        for new in (k + 1, k - 1):
            candidate = re.sub(r"^K = -?\d+", f"K = {new}", text, count=1, flags=re.M)
            if candidate not in self.proposed:
                self.proposed.add(candidate)
                return Proposal(f"K {k}→{new}", {"train.py": candidate})
        return None

    def observe(self, result):
        pass


def best_metric(root) -> float:
    return max(r["metric"] for r in rows(root) if r["status"] == "keep")


def test_tree_steps_back_through_a_discarded_node_where_greedy_is_stuck(tmp_path):
    """Same agent, same number of experiments: greedy only ever edits the best (K = 0), whose neighbours are
    worse; the tree also edits a discarded node (K = 1, through its ref) and finds K = 2."""
    greedy_root = make_task(tmp_path / "greedy", train=STEP_TASK, extra_config=ONE_SEED)
    run(greedy_root, StepAgent(), 6, strategy="greedy")
    tree_root = make_task(tmp_path / "tree", train=STEP_TASK, extra_config=ONE_SEED)
    agent = StepAgent()
    run(tree_root, agent, 6, strategy="tree")
    assert best_metric(greedy_root) == 1.0
    assert best_metric(tree_root) >= 2.0 > best_metric(greedy_root)
    records = {r["id"]: r for r in rows(tree_root)}
    found = next(r for r in records.values() if r["description"] == "K 1→2")
    parent = records[found["parent_id"]]
    assert parent["status"] == "discard" and parent["description"] == "K 0→1"
    assert "K = 2" in branch_file(tree_root) or "K = 3" in branch_file(tree_root)
    shown = next(c for c in agent.contexts if c.parent_commit == parent["commit_sha"] and c.fix is None)
    assert shown.parent_is_best is False and [n["id"] for n in shown.lineage] == [1, parent["id"]]
    # A crashed node (K = 3) gets a debug child: the fix, as a child of the crash in the tree.
    crashed = next(r for r in records.values() if r["description"] == "K 2→3")
    assert crashed["status"] == "crash"
    fix = next(r for r in records.values() if r["description"] == "SAFE 1")
    assert fix["parent_id"] == crashed["id"] and fix["attempt"] == 1 and fix["status"] == "keep"
    status = subprocess.run([sys.executable, "-m", "autoresearch", "status", "--tag", "t"], cwd=tree_root,
                            capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    assert status.returncode == 0, status.stderr
    assert "Search tree" in status.stdout and f"└── #{fix['id']} 2.500000 keep  SAFE 1  ★ best" in status.stdout
    assert f"#{found['id']} 2.000000 keep  K 1→2" in status.stdout


def test_parallel_runs_rounds_of_k_from_the_best(tmp_path):
    root = make_task(tmp_path / "ws", train=SCORE_TASK, extra_config=ONE_SEED)
    steps = [sub(r"W = [\d.]+(\ntime.sleep\([\d.]+\))?", f"W = {w}\ntime.sleep({delay})", f"W {w}")
             for w, delay in ((0.5, 0.1), (1.0, 1.5), (1.5, 0.1), (2.5, 0.1))]
    agent = ScriptedAgent(*steps)
    run(root, agent, 5, workers=2, strategy="parallel")  # two rounds of two, and the re-base of W 1.0 between them
    records = rows(root)[1:]
    first_round, second_round = [r for r in records if r["description"] in ("W 0.5", "W 1.0")], \
        [r for r in records if r["description"] in ("W 1.5", "W 2.5")]
    # The second round starts only after both runs of the first have finished.
    assert len(first_round) == len(second_round) == 2
    assert min(r["started_at"] for r in second_round) >= max(r["ended_at"] for r in first_round)
    assert len({r["parent_commit"] for r in first_round}) == len({r["parent_commit"] for r in second_round}) == 1


def test_resume_after_sigkill_with_two_workers_loses_and_duplicates_nothing(tmp_path):
    """SIGKILL the harness while two candidates train, then resume: both are recorded as cut off, each is measured
    again exactly once, and the journal, results.tsv, refs and branch agree."""
    root = make_task(tmp_path / "ws", train=SCORE_TASK.replace("LR, DELAY = 0.1, 0.1", "LR, DELAY = 0.1, 1.0"),
                     extra_config=ONE_SEED)
    cli = [sys.executable, "-m", "autoresearch", "run", "--tag", "t", "--agent", "tune", "--workers", "2", "--max-experiments", "4"]
    killed = subprocess.run(cli, cwd=root, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "AUTORESEARCH_FAILPOINT": "train:3"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    cut = rows(root)
    assert sum(r["state"] == "running" for r in cut) == 2  # both workers' rows were under way
    resumed = subprocess.run(cli, cwd=root, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    records = rows(root)
    assert all(r["state"] == "done" for r in records)
    interrupted = [r for r in records if r["reason"].startswith("interrupted:")]
    assert len(interrupted) == 2
    retries = [r for r in records if r["retry_of"] is not None]
    assert sorted(r["retry_of"] for r in retries) == sorted(r["id"] for r in interrupted)  # once each
    measured = [r["editable_hash"] for r in records if r["status"] in ("keep", "discard") and r["retry_of"] is None
                and not r["reason"].startswith("interrupted:")]
    assert len(measured) == len(set(measured))  # no candidate measured twice, apart from the retries
    table = (root / "results.tsv").read_text().splitlines()[1:]
    assert len(table) == len(records)
    for r in records:
        if r["commit_sha"]:
            assert git(root, "rev-parse", f"refs/autoresearch/t/{r['id']}") == r["commit_sha"]
    best = max((r for r in records if r["status"] == "keep"), key=lambda r: (r["metric"], -r["id"]))
    assert git(root, "rev-parse", "autoresearch/t") == best["commit_sha"]
    assert not list((root / ".autoresearch" / "trials" / "t").iterdir())  # no worktree left behind
    assert "git worktree" not in resumed.stderr


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_or_sigterm_with_two_trials_under_way_records_both_and_leaves_nothing_running(tmp_path, sig, code):
    import psutil
    from test_loop import cli, wait_for

    slow = SCORE_TASK.replace("time.sleep(DELAY)", "time.sleep(DELAY if W == 0.0 else 60)")  # the candidates hang
    root = make_task(tmp_path / "ws", train=slow, extra_config=ONE_SEED, factor=100.0)
    harness = cli("run", "--tag", "t", "--agent", "tune", "--workers", "2", "--max-experiments", "4", "--budget", "1",
                  cwd=root)
    def both_running():
        try:
            return sum(r["state"] == "running" and r["pid"] is not None for r in rows(root)) >= 2
        except sqlite3.OperationalError:  # the journal is not made yet
            return False

    try:
        wait_for(both_running, timeout=150)  # both candidates under way at once (the tune agent changes W)
    except AssertionError:
        harness.kill()
        raise
    pids = [r["pid"] for r in rows(root) if r["state"] == "running"]
    harness.send_signal(sig)
    out, _ = harness.communicate(timeout=120)
    assert harness.returncode == code, out
    records = rows(root)
    assert all(r["state"] == "done" for r in records)
    assert sum(r["reason"].startswith("interrupted:") for r in records) == len(pids)
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert "Traceback" not in out


def test_an_llm_agent_is_asked_for_several_proposals_at_once(tmp_path, monkeypatch):
    """With K workers, an agent that can be asked concurrently (the LLM APIs) gets K requests at once: its latency
    is paid once per round, not once per worker. A real OpenAI-wire server on 127.0.0.1 answers each in 2 s."""
    from wire.openai_chat import Edit, OpenAIChatServer

    root = make_task(tmp_path / "ws", train=SCORE_TASK, extra_config=ONE_SEED)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-local")
    edits = [Edit("train.py", "W = 0.0", "W = 1.0", "W 1"), Edit("train.py", "LR, DELAY = 0.1, 0.1", "LR, DELAY = 0.2, 0.1", "LR 0.2")]
    with OpenAIChatServer(edits, delay=2.0) as server:
        run_session(root, tag="t", agent_name="openai", max_experiments=2, workers=2, echo=lambda *_: None,
                    agent_overrides={"model": "scripted-model", "base_url": server.base_url})
        spans = sorted(server.spans)
    assert len(spans) >= 2 and spans[1][0] < spans[0][1]  # the second request came while the first was answered
    records = [r for r in rows(root)[1:] if r["rebased_from"] is None]  # both improve: the later one is re-based too
    assert sorted(r["description"] for r in records) == ["LR 0.2", "W 1"] and {r["worker"] for r in records} == {0, 1}
    assert sum(r["llm_calls"] for r in rows(root)) == len(spans)  # every call billed once, to some row
