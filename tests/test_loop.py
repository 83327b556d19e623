"""The research loop with a real git repo and real subprocesses, on a small numpy task (score, maximize)."""

import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pandas as pd
import psutil
import pytest

from autoresearch import UsageError
from autoresearch.agents.base import Proposal, Usage
from autoresearch.session import run_session
from tasks import NUMPY_TASK, git, make_task
from tasks import journal_rows as rows

class ScriptedAgent:
    """Proposes what each step function returns for the context (None: nothing), and remembers what it saw."""

    name = "scripted"

    def __init__(self, *steps):
        self.steps = list(steps)
        self.contexts, self.results = [], []

    def propose(self, context):
        self.contexts.append(context)
        return self.steps.pop(0)(context) if self.steps else None

    def observe(self, result):
        self.results.append(result)


def edit(old, new, description=None, path="train.py"):
    def step(context):
        return Proposal(description or f"{old} -> {new}", {path: context.files["train.py"].replace(old, new)})
    return step


def run(root, agent, n, **kw):
    return run_session(root, tag="t", agent=agent, max_experiments=n, echo=lambda *_: None, **kw)


def tsv(root):
    return pd.read_csv(root / "results.tsv", sep="\t")


def test_keep_advances_the_branch_and_a_discard_keeps_only_its_ref(tmp_path):
    root = make_task(tmp_path / "ws")
    base = git(root, "rev-parse", "HEAD")
    agent = ScriptedAgent(edit("LR = 0.1", "LR = 0.3"), edit("STEPS = 40", "STEPS = 2"))
    run(root, agent, 5)
    records = rows(root)
    assert [r["status"] for r in records] == ["keep", "keep", "discard"]
    kept, discarded = records[1]["commit_sha"], records[2]["commit_sha"]
    # The user's checkout is where it was: on main, at the same commit, with the same files.
    assert git(root, "rev-parse", "--abbrev-ref", "HEAD") == "main" and git(root, "rev-parse", "HEAD") == base
    assert "LR = 0.1" in (root / "train.py").read_text() and git(root, "status", "--porcelain") == ""
    # The branch is Karpathy's clean history of kept changes; every trial keeps a ref, discarded ones too.
    assert git(root, "rev-parse", "autoresearch/t") == kept
    assert git(root, "rev-parse", "autoresearch/t~1") == base
    assert subprocess.run(["git", "merge-base", "--is-ancestor", discarded, "autoresearch/t"], cwd=root).returncode == 1
    for r in records:
        assert git(root, "rev-parse", r["trial_ref"]) == r["commit_sha"] and r["trial_ref"] == f"refs/autoresearch/t/{r['id']}"
    assert "STEPS = 2" in git(root, "show", f"{records[2]['trial_ref']}:train.py")
    assert "LR = 0.3" in git(root, "show", "autoresearch/t:train.py") and "STEPS = 40" in git(root, "show", "autoresearch/t:train.py")
    assert git(root, "worktree", "list", "--porcelain").count("worktree ") == 1  # only the user's checkout
    assert not list((root / ".autoresearch" / "trials").rglob("train.py"))
    assert git(root, "log", "-1", "--format=%s", "autoresearch/t") == "LR = 0.1 -> LR = 0.3"
    assert records[1]["metric"] > records[0]["metric"] > records[2]["metric"]
    assert "-LR = 0.1" in records[1]["diff"] and "+LR = 0.3" in records[1]["diff"]
    assert records[2]["reason"] and "score:" in records[2]["log_tail"] and records[1]["log_tail"] == ""
    table = tsv(root)
    assert list(table.columns) == ["commit", "score", "memory_gb", "status", "description"]
    assert list(table["status"]) == ["keep", "keep", "discard"]
    assert table["commit"].tolist() == [r["commit_sha"][:7] for r in records]
    assert (root / ".autoresearch" / "tags" / "t" / "results.tsv").read_text() == (root / "results.tsv").read_text()
    assert agent.contexts[1].best == pytest.approx(records[1]["metric"])
    assert [h["status"] for h in agent.contexts[1].history] == ["keep", "keep"]
    assert agent.contexts[1].files["train.py"] == git(root, "show", f"{kept}:train.py") + "\n"


def test_an_edit_to_a_locked_file_is_refused_and_never_run(tmp_path):
    root = make_task(tmp_path / "ws")
    sneaky = lambda c: Proposal("improve the data", {"prepare.py": "DATA = 2\n", "train.py": c.files["train.py"].replace("LR = 0.1", "LR = 0.3")})
    agent = ScriptedAgent(sneaky)
    run(root, agent, 1)
    refused = rows(root)[1]
    assert refused["status"] == "invalid" and "prepare.py is not an editable file" in refused["reason"]
    assert refused["commit_sha"] is None and refused["wall_seconds"] is None
    assert not (root / ".autoresearch" / "runs" / str(refused["id"])).exists()
    assert (root / "prepare.py").read_text().endswith("DATA = 1\n") and "LR = 0.1" in (root / "train.py").read_text()
    assert git(root, "status", "--porcelain") == ""
    assert agent.results[0].status == "invalid"


def test_a_run_that_rewrites_a_locked_file_is_invalid_and_the_file_restored(tmp_path):
    root = make_task(tmp_path / "ws")
    cheat = 'open("prepare.py", "w").write("DATA = 999\\n")\n'
    agent = ScriptedAgent(lambda c: Proposal("cheat", {"train.py": cheat + c.files["train.py"].replace("LR = 0.1", "LR = 0.3")}))
    run(root, agent, 1)
    record = rows(root)[1]
    assert record["status"] == "invalid" and "locked file changed during the run: prepare.py" in record["reason"]
    assert (root / "prepare.py").read_text().endswith("DATA = 1\n")
    assert git(root, "status", "--porcelain") == ""


HANG = textwrap.dedent('''\
    import os, subprocess, time
    child = subprocess.Popen(["sleep", "300.5"])
    open(PIDS, "w").write(f"{os.getpid()} {child.pid}")
    time.sleep(300)
''')


def test_a_hanging_script_is_killed_at_the_limit_with_no_process_left(tmp_path):
    outside = tmp_path / "outside"  # a folder the sandbox lets the run write
    outside.mkdir()
    root = make_task(tmp_path / "ws", factor=1.0, grace=1.0, extra_config=f'\n[sandbox]\nwritable = ["{outside}"]\n')
    agent = ScriptedAgent(lambda c: Proposal("hang", {"train.py": f"PIDS = {str(outside / 'pids.txt')!r}\n" + HANG}))
    start = time.monotonic()
    run(root, agent, 1)
    assert time.monotonic() - start < 30
    record = rows(root)[1]
    assert record["status"] == "timeout" and "limit 2s" in record["reason"]
    assert 2.0 <= record["wall_seconds"] < 8.0
    assert len((outside / "pids.txt").read_text().split()) == 2  # both started (pids of its own PID namespace, in a sandbox)
    left = []
    for proc in psutil.process_iter(["cmdline", "cwd", "status"]):  # by what they run and where, not by pid
        if proc.info["status"] != psutil.STATUS_ZOMBIE and (proc.info["cmdline"] == ["sleep", "300.5"] or
                                                           str(proc.info["cwd"] or "").startswith(str(root))):
            left.append(proc.info)
    assert left == []
    assert tsv(root).iloc[1].tolist()[1:] == [0.0, 0.0, "crash", "[timeout] hang"]  # the anchor's three statuses


def test_a_crash_is_recorded_with_its_log_tail(tmp_path):
    root = make_task(tmp_path / "ws")
    crash = "".join(f"print('line {i}')\n" for i in range(80)) + "raise RuntimeError('boom: shapes do not match')\n"
    run(root, ScriptedAgent(lambda c: Proposal("broken idea", {"train.py": crash})), 1)
    record = rows(root)[1]
    assert record["status"] == "crash" and record["reason"] == "exit code 1"
    tail = record["log_tail"].splitlines()
    assert len(tail) == 50 and tail[-1] == "RuntimeError: boom: shapes do not match" and "line 79" in tail
    assert "line 10" not in tail
    table = tsv(root)
    assert table.iloc[1].tolist()[1:4] == [0.0, 0.0, "crash"]
    assert "LR = 0.1" in (root / "train.py").read_text()


def test_a_nan_metric_is_a_crash(tmp_path):
    root = make_task(tmp_path / "ws")
    run(root, ScriptedAgent(edit("LR = 0.1", "LR = 1e200")), 1)
    record = rows(root)[1]
    assert record["status"] == "crash" and record["reason"] in ("score is nan", "score is -inf")


def test_missing_metric_is_a_crash(tmp_path):
    root = make_task(tmp_path / "ws")
    run(root, ScriptedAgent(edit('print(f"score: {score:.6f}")', 'print(f"loss: {score:.6f}")')), 1)
    assert rows(root)[1]["reason"] == "no 'score' in the summary block"


def test_a_crash_is_sent_back_for_fixes_then_given_up(tmp_path):
    root = make_task(tmp_path / "ws")
    broken = lambda c: Proposal("faster", {"train.py": c.files["train.py"].replace("LR = 0.1", "LR = 0.3\nraise SystemExit('typo in the update rule')")})

    def fix_badly(context):
        assert context.fix is not None and "typo in the update rule" in context.fix.log_tail
        return Proposal(f"faster (fix {context.fix.attempt})", {"train.py": context.fix.files["train.py"].replace("typo", "still a typo")})

    agent = ScriptedAgent(broken, fix_badly, fix_badly, edit("STEPS = 40", "STEPS = 60"))
    run(root, agent, 4)
    records = rows(root)
    assert [(r["description"], r["status"], r["attempt"]) for r in records[1:]] == [
        ("faster", "crash", 0), ("faster (fix 1)", "crash", 1), ("faster (fix 2)", "crash", 2), ("STEPS = 40 -> STEPS = 60", "keep", 0)]
    assert [c.fix.attempt if c.fix else 0 for c in agent.contexts] == [0, 1, 2, 0]


def test_a_fix_that_works_is_kept(tmp_path):
    root = make_task(tmp_path / "ws")
    broken = lambda c: Proposal("faster", {"train.py": c.files["train.py"].replace("LR = 0.1", "LR = 0.3\nundefined_name")})
    fix = lambda c: Proposal("faster (fixed)", {"train.py": c.fix.files["train.py"].replace("\nundefined_name", "")})
    run(root, ScriptedAgent(broken, fix), 2)
    assert [r["status"] for r in rows(root)] == ["keep", "crash", "keep"]
    assert "NameError" in rows(root)[1]["log_tail"]


def test_a_repeated_candidate_is_skipped(tmp_path):
    root = make_task(tmp_path / "ws")
    agent = ScriptedAgent(edit("STEPS = 40", "STEPS = 2"), edit("STEPS = 40", "STEPS = 2", "the same idea again"), lambda c: Proposal("no change", dict(c.files)))
    run(root, agent, 3)
    assert [r["description"] for r in rows(root)] == ["baseline", "STEPS = 40 -> STEPS = 2"]
    assert [r.status for r in agent.results] == ["discard", "duplicate", "duplicate"]


def test_an_existing_tag_is_resumed_not_overwritten(tmp_path):
    root = make_task(tmp_path / "ws")
    run(root, ScriptedAgent(edit("LR = 0.1", "LR = 0.3")), 1)
    head = git(root, "rev-parse", "autoresearch/t")
    run(root, ScriptedAgent(edit("STEPS = 40", "STEPS = 80")), 1)
    records = rows(root)
    assert [r["description"] for r in records] == ["baseline", "LR = 0.1 -> LR = 0.3", "STEPS = 40 -> STEPS = 80"]
    assert records[2]["parent_commit"] == head
    assert git(root, "rev-parse", "autoresearch/t") == [r for r in records if r["status"] == "keep"][-1]["commit_sha"]


def cli(*args, cwd, **kw):
    return subprocess.Popen([sys.executable, "-m", "autoresearch", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


SLOW = NUMPY_TASK.replace('print("training done")', 'import time; time.sleep(float(os.environ["AUTORESEARCH_TIME_BUDGET"])); print("training done")')


def wait_for(predicate, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


def running_row(root, min_id):
    """The first row at or after min_id whose run has started, once the journal exists."""
    try:
        return next((r for r in rows(root) if r["state"] == "running" and r["id"] >= min_id and r["pid"]), None)
    except sqlite3.OperationalError:  # the journal is not created yet
        return None


def test_sigkill_mid_experiment_then_resume_loses_and_duplicates_nothing(tmp_path):
    root = make_task(tmp_path / "ws", train=SLOW)
    harness = cli("run", "--tag", "t", "--agent", "perturb", "--budget", "1.5", "--max-experiments", "5", cwd=root)
    victim = wait_for(lambda: running_row(root, 3))
    harness.kill()
    harness.wait()
    assert psutil.pid_exists(victim["pid"])  # its run lives on in its own process group
    resumed = cli("run", "--tag", "t", "--agent", "perturb", "--budget", "1.5", "--max-experiments", "2", cwd=root)
    out, _ = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, out
    records = rows(root)
    assert not psutil.pid_exists(victim["pid"]) or psutil.Process(victim["pid"]).status() == psutil.STATUS_ZOMBIE
    cut = [r for r in records if r["id"] == victim["id"]][0]
    assert (cut["state"], cut["status"]) == ("done", "crash") and cut["reason"].startswith("interrupted")
    assert all(r["state"] == "done" for r in records)
    # everything before the kill, the cut one, its one re-measurement, then two new
    assert len(records) == victim["id"] + 3
    retry = records[victim["id"]]
    assert retry["retry_of"] == victim["id"] and retry["commit_sha"] == cut["commit_sha"] and retry["status"] != "crash"
    assert len({r["id"] for r in records}) == len(records)
    commits = [r["commit_sha"] for r in records if r["commit_sha"] and not r["retry_of"]]
    assert len(set(commits)) == len(commits)
    assert sum(r["description"] == "baseline" for r in records) == 1
    table = tsv(root)
    assert len(table) == len(records) and table["commit"].tolist() == [r["commit_sha"][:7] for r in records]
    best = [r for r in records if r["status"] == "keep"][-1]
    assert git(root, "rev-parse", "autoresearch/t") == best["commit_sha"]
    assert git(root, "status", "--porcelain") == ""
    assert git(root, "worktree", "list", "--porcelain").count("worktree ") == 1


def test_ctrl_c_finishes_cleanly_on_the_best_commit(tmp_path):
    root = make_task(tmp_path / "ws", train=SLOW)
    harness = cli("run", "--tag", "t", "--agent", "perturb", "--budget", "5", "--max-experiments", "5", cwd=root)
    victim = wait_for(lambda: running_row(root, 2))
    harness.send_signal(signal.SIGINT)
    out, _ = harness.communicate(timeout=60)
    assert harness.returncode == 130, out
    assert "Interrupted" in out
    records = rows(root)
    cut = [r for r in records if r["id"] == victim["id"]][0]
    assert cut["status"] == "crash" and cut["reason"].startswith("interrupted")
    assert not psutil.pid_exists(victim["pid"]) or psutil.Process(victim["pid"]).status() == psutil.STATUS_ZOMBIE
    best = [r for r in records if r["status"] == "keep"][-1]
    assert git(root, "rev-parse", "autoresearch/t") == best["commit_sha"]
    assert git(root, "status", "--porcelain") == ""


def test_numpy_task_end_to_end_through_the_cli(tmp_path):
    root = make_task(tmp_path / "ws")
    proc = cli("run", "--tag", "np", "--agent", "perturb", "--max-experiments", "4", cwd=root)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    table = tsv(root)
    assert list(table.columns) == ["commit", "score", "memory_gb", "status", "description"]
    assert len(table) == 5 and table["status"].iloc[0] == "keep"
    assert set(table["status"]) <= {"keep", "discard", "crash"}
    assert all(re.fullmatch(r"(LR|STEPS) \S+→\S+", d) for d in table["description"].iloc[1:])
    status = subprocess.run([sys.executable, "-m", "autoresearch", "status"], cwd=root, capture_output=True, text=True)
    assert status.returncode == 0 and "Best score:" in status.stdout and "autoresearch/np" in status.stdout
    assert "Time: training" in status.stdout and "per hour" in status.stdout


def test_files_a_run_leaves_behind_never_ride_along_in_a_commit(tmp_path):
    root = make_task(tmp_path / "ws")
    writer = lambda c: Proposal("log to a file", {"train.py": 'open("out.txt", "a").write("x")\n' + c.files["train.py"].replace("LR = 0.1", "LR = 0.3")})
    run(root, ScriptedAgent(writer, edit("STEPS = 40", "STEPS = 2")), 2)
    records = rows(root)
    assert [r["status"] for r in records] == ["keep", "keep", "discard"]
    for r in records[1:]:
        assert git(root, "show", "--name-only", "--format=", r["commit_sha"]) == "train.py"
        assert "diff --git a/out.txt" not in r["diff"]


def test_the_journal_times_the_whole_experiment(tmp_path):
    root = make_task(tmp_path / "ws")

    def slow_thinker(context):
        time.sleep(0.3)
        return edit("LR = 0.1", "LR = 0.3")(context)

    run(root, ScriptedAgent(slow_thinker), 1)
    record = rows(root)[1]
    assert record["propose_seconds"] >= 0.3
    assert record["experiment_seconds"] >= record["propose_seconds"] + record["wall_seconds"]


def test_max_hours_stops_before_the_next_experiment(tmp_path):
    root = make_task(tmp_path / "ws")
    run_session(root, tag="t", agent=ScriptedAgent(edit("LR = 0.1", "LR = 0.3")), max_hours=0, echo=lambda *_: None)
    assert [r["description"] for r in rows(root)] == ["baseline"]


class PayingAgent(ScriptedAgent):
    """A scripted agent whose every proposal costs 1,000 + 200 tokens and one cent."""

    def __init__(self, *steps):
        super().__init__(*steps)
        self.spent = Usage()

    def propose(self, context):
        self.spent = self.spent.add(Usage(1000, 200, 0.01, 1))
        return super().propose(context)


def test_the_cost_cap_stops_the_loop_and_spend_lands_in_the_journal(tmp_path):
    root = make_task(tmp_path / "ws")
    steps = [lambda c, i=i: Proposal(f"STEPS {40 + i}", {"train.py": re.sub(r"STEPS = \d+", f"STEPS = {40 + i}", c.files["train.py"])})
             for i in range(1, 8)]
    ledger, _ = run_session(root, tag="t", agent=PayingAgent(*steps), max_cost=0.025, echo=lambda *_: None)
    records = rows(root)
    assert len(records) == 1 + 3  # the baseline, then three proposals at one cent each reach 2.5 cents
    assert [(r["input_tokens"], r["output_tokens"], r["llm_calls"]) for r in records[1:]] == [(1000, 200, 1)] * 3
    assert sum(r["cost_usd"] for r in records) == pytest.approx(0.03)
    assert ledger.total_cost() == pytest.approx(0.03)


def test_spend_on_a_proposal_that_never_ran_is_billed_to_the_next_row(tmp_path):
    root = make_task(tmp_path / "ws")
    run_session(root, tag="t", agent=PayingAgent(lambda c: None, edit("LR = 0.1", "LR = 0.3")), max_experiments=1, echo=lambda *_: None)
    assert rows(root)[1]["cost_usd"] == pytest.approx(0.02) and rows(root)[1]["llm_calls"] == 2


class BrokenAgent:
    """An agent whose every call fails, as with a wrong API key."""

    name = "broken"

    def __init__(self):
        self.spent, self.calls, self.last_error = Usage(), 0, None

    def propose(self, context):
        self.calls += 1
        self.last_error = "401 Unauthorized: invalid API key"
        return None

    def observe(self, result):
        pass


def test_an_agent_that_keeps_failing_stops_the_loop_early(tmp_path):
    root = make_task(tmp_path / "ws")
    lines = []
    agent = BrokenAgent()
    run_session(root, tag="t", agent=agent, max_experiments=10, echo=lines.append)
    assert agent.calls == 5
    assert any("401 Unauthorized" in line for line in lines)


def test_a_journal_written_before_the_test_split_columns_is_resumed(tmp_path):
    root = make_task(tmp_path / "ws")
    run(root, ScriptedAgent(edit("LR = 0.1", "LR = 0.2")), 1)
    db = sqlite3.connect(root / ".autoresearch" / "journal.sqlite")  # as an older version wrote it
    db.execute("ALTER TABLE experiments DROP COLUMN test_metric")
    db.execute("ALTER TABLE experiments DROP COLUMN test_values_json")
    db.commit()
    db.close()
    run(root, ScriptedAgent(edit("LR = 0.2", "LR = 0.3")), 1)
    records = rows(root)
    assert [r["status"] for r in records][:2] == ["keep", "keep"] and records[2]["status"] in ("keep", "discard")
    assert records[1]["test_metric"] is None  # this task has no test command


class Watcher:
    """Collects the loop's events, as a live view or a tracker would see them."""

    def __init__(self):
        self.events = []

    def experiment_started(self, row_id, description, budget, worker, label):
        self.events.append(("started", row_id, description))

    def process_started(self, row_id, kind, log):
        self.events.append(("process", row_id, kind, log is None or log.name.endswith(".log")))

    def experiment_recorded(self, row):
        self.events.append(("recorded", row.id, row.status))

    def proposing(self, active, cost):
        self.events.append(("proposing", active))

    def close(self):
        self.events.append(("closed",))


class BrokenWatcher(Watcher):
    name = "broken tracker"

    def experiment_recorded(self, row):
        raise ConnectionError("tracking server is gone")


def test_watchers_see_every_experiment_and_a_broken_one_is_switched_off_with_one_warning(tmp_path):
    root = make_task(tmp_path / "ws")
    said = []
    agent = ScriptedAgent(edit("LR = 0.1", "LR = 0.3"), lambda c: Proposal("touch the data", {"prepare.py": "X\n"}),
                          edit("STEPS = 40", "STEPS = 2"), edit("LR = 0.3", "LR = 0.2"))
    good, broken = Watcher(), BrokenWatcher()
    run_session(root, tag="t", agent=agent, max_experiments=2, echo=said.append, observers=[broken, good])
    recorded = [e for e in good.events if e[0] == "recorded"]
    assert recorded == [("recorded", r["id"], r["status"]) for r in rows(root)]
    assert [s for _, _, s in recorded] == ["keep", "keep", "invalid", "discard"]
    started = [e[1] for e in good.events if e[0] == "started"]
    assert started == [r["id"] for r in rows(root) if r["status"] != "invalid"]
    assert ("process", started[0], "train", True) in good.events
    asked = good.events.count(("proposing", True))
    assert asked == good.events.count(("proposing", False)) and asked >= 3
    assert good.events[-1] == ("closed",)
    warnings = [s for s in said if "broken tracker failed" in s]
    assert len(warnings) == 1 and "ConnectionError: tracking server is gone" in warnings[0]
    assert len([e for e in broken.events if e[0] == "started"]) == 1  # switched off after the baseline's record
