"""Trials with real git and real subprocesses: the user's checkout and files are never touched, one harness per tag,
two tags side by side, a stale lock taken over, one protocol per tag, the tune study resumed after SIGKILL."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import psutil
import pytest

from autoresearch import UsageError
from autoresearch.agents.base import Proposal
from autoresearch.session import run_session
from tasks import NUMPY_TASK, git, make_task
from tasks import journal_rows as rows
from test_loop import SLOW, ScriptedAgent, cli, edit, running_row, wait_for


def run(root, agent, n, tag="t", **kw):
    return run_session(root, tag=tag, agent=agent, max_experiments=n, echo=lambda *_: None, **kw)


def commit_all(root, message="user commit"):
    git(root, "add", "-A")
    git(root, "-c", "user.name=u", "-c", "user.email=u@u", "commit", "-qm", message)


def worktrees(root) -> int:
    return git(root, "worktree", "list", "--porcelain").count("worktree ")


# -- the user's files are sacred ---------------------------------------------------------------------------------

def test_hand_edits_an_untracked_note_and_a_dirty_program_are_left_alone_and_never_taken_in(tmp_path):
    root = make_task(tmp_path / "ws")
    git(root, "checkout", "-q", "-b", "autoresearch/t")  # the user works on the harness's branch itself
    hand = NUMPY_TASK.replace("STEPS = 40", "STEPS = 41  # my hand edit")
    (root / "train.py").write_text(hand)
    (root / "notes.txt").write_text("my notes\n")
    (root / "program.md").write_text("my unsaved instructions\n")
    lines = []
    agent = ScriptedAgent(edit("LR = 0.1", "LR = 0.3"), edit("LR = 0.3", "LR = 0.35"))
    run_session(root, tag="t", agent=agent, max_experiments=2, echo=lines.append)
    assert (root / "train.py").read_text() == hand and (root / "notes.txt").read_text() == "my notes\n"
    assert (root / "program.md").read_text() == "my unsaved instructions\n"
    assert any(line.startswith("Uncommitted changes in your checkout are left alone") and "train.py" in line for line in lines)
    records = rows(root)
    assert [r["status"] for r in records][:2] == ["keep", "keep"]
    assert all("my hand edit" not in r["diff"] for r in records)  # never part of a candidate
    assert agent.contexts[0].program == "Maximize the score.\n"  # the committed program, not the dirty one
    # The checkout is dirty, so the branch waits at its start (the journal has the best) and says so.
    assert git(root, "rev-parse", "autoresearch/t") == records[0]["commit_sha"]
    assert any("has uncommitted changes: it is left as it is" in line for line in lines)
    # Once the user's tree is clean, the next run brings the branch and the clean checkout to the best.
    (root / "train.py").write_text(git(root, "show", "HEAD:train.py") + "\n")
    (root / "program.md").write_text("Maximize the score.\n")
    run(root, ScriptedAgent(), 0)
    best = max((r for r in rows(root) if r["status"] == "keep"), key=lambda r: r["metric"])
    assert git(root, "rev-parse", "autoresearch/t") == best["commit_sha"] == git(root, "rev-parse", "HEAD")
    assert "LR = 0.3" in (root / "train.py").read_text() and (root / "notes.txt").exists()
    assert git(root, "status", "--porcelain") == "?? notes.txt"


def test_a_committed_journal_and_results_tsv_survive_and_the_users_results_tsv_is_not_overwritten(tmp_path):
    root = make_task(tmp_path / "ws")
    run(root, ScriptedAgent(edit("LR = 0.1", "LR = 0.3")), 1, tag="a")
    (root / ".gitignore").write_text("")  # the user commits the harness's state and the table
    git(root, "add", "-f", ".autoresearch/journal.sqlite", "results.tsv", ".gitignore")
    git(root, "-c", "user.name=u", "-c", "user.email=u@u", "commit", "-qm", "keep my results")
    mine = (root / "results.tsv").read_text()
    lines = []
    run_session(root, tag="b", agent=ScriptedAgent(edit("STEPS = 40", "STEPS = 60")), max_experiments=1, echo=lines.append)
    assert (root / "results.tsv").read_text() == mine  # a tracked file of the user's: left alone
    assert any("results.tsv is tracked by git" in line for line in lines)
    table = (root / ".autoresearch" / "tags" / "b" / "results.tsv").read_text().splitlines()
    assert len(table) == 3 and table[1].split("\t")[3] == "keep"
    assert {r["branch"] for r in rows(root)} == {"autoresearch/a", "autoresearch/b"}  # the journal kept both tags
    assert git(root, "rev-parse", "--abbrev-ref", "HEAD") == "main"


def test_commits_the_user_makes_on_the_branch_are_never_dropped(tmp_path):
    root = make_task(tmp_path / "ws")
    run(root, ScriptedAgent(edit("LR = 0.1", "LR = 0.3")), 1)
    git(root, "checkout", "-q", "autoresearch/t")
    (root / "mine.txt").write_text("mine\n")
    commit_all(root, "my own commit on the branch")
    mine = git(root, "rev-parse", "HEAD")
    with pytest.raises(UsageError, match="has commits autoresearch did not make"):
        run(root, ScriptedAgent(edit("STEPS = 40", "STEPS = 60")), 1)
    assert git(root, "rev-parse", "autoresearch/t") == mine and (root / "mine.txt").exists()
    proc = subprocess.run([sys.executable, "-m", "autoresearch", "run", "--tag", "t", "--agent", "perturb"],
                          cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


# -- one harness per tag -------------------------------------------------------------------------------------------

def test_a_second_run_on_the_same_tag_is_refused_and_the_first_goes_on_unharmed(tmp_path):
    root = make_task(tmp_path / "ws", train=SLOW)
    first = cli("run", "--tag", "t", "--agent", "perturb", "--budget", "1", "--max-experiments", "3", cwd=root)
    wait_for(lambda: running_row(root, 2))
    for command in ("run", "baseline"):
        second = subprocess.run([sys.executable, "-m", "autoresearch", command, "--tag", "t", "--budget", "1"], cwd=root,
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 2, second.stderr
        assert second.stderr.strip().splitlines() == [second.stderr.strip()]
        assert f"in use by pid {first.pid}" in second.stderr
    out, _ = first.communicate(timeout=180)
    assert first.returncode == 0, out
    records = rows(root)
    assert len(records) == 4 and all(r["state"] == "done" for r in records)
    assert not any(r["reason"].startswith("interrupted") for r in records)


def test_two_tags_run_at_once_in_one_workspace_without_touching_each_other(tmp_path):
    root = make_task(tmp_path / "ws", train=SLOW)
    a = cli("run", "--tag", "a", "--agent", "perturb", "--budget", "1", "--max-experiments", "3", cwd=root)
    wait_for(lambda: running_row(root, 1))
    b = cli("run", "--tag", "b", "--agent", "perturb", "--budget", "1", "--max-experiments", "3", "--seed", "7", cwd=root)
    out_a, _ = a.communicate(timeout=240)
    out_b, _ = b.communicate(timeout=240)
    assert a.returncode == 0 and b.returncode == 0, (out_a, out_b)
    records = rows(root)
    for tag in ("a", "b"):
        mine = [r for r in records if r["branch"] == f"autoresearch/{tag}"]
        assert len(mine) == 4 and all(r["state"] == "done" and not r["reason"].startswith("interrupted") for r in mine)
        assert all(r["trial_ref"].startswith(f"refs/autoresearch/{tag}/") for r in mine)
        best = max((r for r in mine if r["status"] == "keep"), key=lambda r: r["metric"])
        assert git(root, "rev-parse", f"autoresearch/{tag}") == best["commit_sha"]
        table = (root / ".autoresearch" / "tags" / tag / "results.tsv").read_text().splitlines()
        assert [line.split("\t")[0] for line in table[1:]] == [r["commit_sha"][:7] for r in mine]
        baseline = mine[0]
        assert len(set(json.loads(baseline["values_json"]))) >= 1 and baseline["parent_commit"] == baseline["commit_sha"]
    assert "Another tag's run writes results.tsv" in out_b
    assert worktrees(root) == 1 and git(root, "status", "--porcelain") == ""


def test_a_stale_lock_is_taken_over_with_a_note(tmp_path):
    root = make_task(tmp_path / "ws", train=SLOW)
    harness = cli("run", "--tag", "t", "--agent", "perturb", "--budget", "1", "--max-experiments", "5", cwd=root)
    wait_for(lambda: running_row(root, 2))
    harness.kill()
    harness.wait()
    lock = json.loads((root / ".autoresearch" / "locks" / "t.lock").read_text())
    assert lock["pid"] == harness.pid
    resumed = cli("run", "--tag", "t", "--agent", "perturb", "--budget", "1", "--max-experiments", "1", cwd=root)
    out, _ = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, out
    assert f"Taking over tag 't' from pid {harness.pid}" in out
    assert (root / ".autoresearch" / "locks" / "t.lock").read_text() == ""  # a clean exit names no holder
    assert all(r["state"] == "done" for r in rows(root))


# -- one protocol per tag -----------------------------------------------------------------------------------------

def test_a_resume_with_another_budget_is_refused_and_baseline_starts_a_new_segment(tmp_path):
    root = make_task(tmp_path / "ws")
    run(root, ScriptedAgent(edit("LR = 0.1", "LR = 0.3")), 1, budget=1)
    proc = subprocess.run([sys.executable, "-m", "autoresearch", "run", "--tag", "t", "--agent", "perturb", "--budget", "2"],
                          cwd=root, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "budget_seconds 1 → 2" in proc.stderr and "autoresearch baseline" in proc.stderr
    assert len(rows(root)) == 2
    proc = subprocess.run([sys.executable, "-m", "autoresearch", "baseline", "--tag", "t", "--budget", "2"],
                          cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Segment 2 of autoresearch/t" in proc.stdout
    run(root, ScriptedAgent(edit("STEPS = 40", "STEPS = 60")), 1, budget=2)
    records = rows(root)
    assert [r["segment"] for r in records] == [1, 1, 2, 2]
    assert records[2]["agent"] == "baseline" and records[2]["commit_sha"] == records[1]["commit_sha"]
    db = sqlite3.connect(root / ".autoresearch" / "journal.sqlite")
    budgets = [json.loads(p)["budget_seconds"] for (p,) in db.execute("SELECT protocol_json FROM protocols ORDER BY segment")]
    db.close()
    assert budgets == [1.0, 2.0]


# -- agent state survives a kill ----------------------------------------------------------------------------------

def test_the_tune_agent_resumed_after_sigkill_proposes_nothing_it_already_measured(tmp_path):
    root = make_task(tmp_path / "ws", train=SLOW)
    harness = cli("run", "--tag", "t", "--agent", "tune", "--budget", "0.3", "--max-experiments", "30", cwd=root)
    wait_for(lambda: running_row(root, 8), timeout=240)
    harness.kill()
    harness.wait()
    before = {r["editable_hash"] for r in rows(root) if r["commit_sha"]}
    cut = [r for r in rows(root) if r["state"] == "running"]
    resumed = cli("run", "--tag", "t", "--agent", "tune", "--budget", "0.3", "--max-experiments", "6", cwd=root)
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    after = [r for r in rows(root) if r["id"] > max(r["id"] for r in cut)]
    fresh = [r for r in after if not r["retry_of"]]
    assert len(fresh) >= 6 and "skipped" not in out
    assert not {r["editable_hash"] for r in fresh} & before  # no configuration measured before the kill again
    assert len({r["editable_hash"] for r in fresh}) == len(fresh)


# -- status at every moment, SIGTERM ---------------------------------------------------------------------------

def test_status_works_during_a_run_whatever_the_descriptions_hold_and_sigterm_is_recorded_like_ctrl_c(tmp_path):
    root = make_task(tmp_path / "ws", train=SLOW)
    marked = "wte[i] rows [/cc @alice] [bold]"
    agent_cli = tmp_path / "cli.sh"
    agent_cli.write_text("#!/bin/sh\nsed -i 's/STEPS = 40/STEPS = 41/' train.py\necho 'DESCRIPTION: " + marked + "'\n")
    agent_cli.chmod(0o755)
    first = subprocess.run([sys.executable, "-m", "autoresearch", "run", "--tag", "t", "--agent", "command", "--command",
                            str(agent_cli), "--budget", "3", "--max-experiments", "1"], cwd=root, capture_output=True,
                           text=True, timeout=120)
    assert first.returncode == 0, first.stdout + first.stderr
    harness = cli("run", "--tag", "t", "--agent", "perturb", "--budget", "3", "--max-experiments", "5", cwd=root)
    wait_for(lambda: running_row(root, 3))
    status = subprocess.run([sys.executable, "-m", "autoresearch", "status", "--tag", "t"], cwd=root, capture_output=True,
                            text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})
    assert status.returncode == 0, status.stderr
    assert marked in status.stdout and "running" in status.stdout and f"pid {harness.pid}" in status.stdout
    victim = wait_for(lambda: running_row(root, 3))  # a run of 3 s under way (status may have taken a while)
    harness.send_signal(signal.SIGTERM)
    out, _ = harness.communicate(timeout=60)
    assert harness.returncode == 143, out
    cut = [r for r in rows(root) if r["id"] == victim["id"]][0]
    assert cut["status"] == "crash" and cut["reason"].startswith("interrupted")
    assert not psutil.pid_exists(victim["pid"]) or psutil.Process(victim["pid"]).status() == psutil.STATUS_ZOMBIE
    assert worktrees(root) == 1
    best = max((r for r in rows(root) if r["status"] == "keep"), key=lambda r: r["metric"])
    assert git(root, "rev-parse", "autoresearch/t") == best["commit_sha"]


def test_prune_frees_the_models_of_keeps_that_are_not_the_best_and_status_shows_the_disk(tmp_path):
    train = NUMPY_TASK.replace('print("training done")', 'import os\nopen(os.path.join(os.environ["AUTORESEARCH_ARTIFACTS"], '
                                                        '"model.bin"), "wb").write(b"x" * 100_000)\nprint("training done")')
    root = make_task(tmp_path / "ws", train=train.replace("LR = 0.1", "LR = 0.01"))
    run(root, ScriptedAgent(edit("LR = 0.01", "LR = 0.02"), edit("LR = 0.02", "LR = 0.04"), edit("STEPS = 40", "STEPS = 2")), 3)
    records = rows(root)
    assert [r["status"] for r in records] == ["keep", "keep", "keep", "discard"]
    runs = root / ".autoresearch" / "runs"
    assert [bool(list((runs / str(r["id"])).glob("artifacts-seed*"))) for r in records] == [True, True, True, False]
    status = subprocess.run([sys.executable, "-m", "autoresearch", "status", "--disk"], cwd=root, capture_output=True, text=True)
    assert "Disk:" in status.stdout and "kept models" in status.stdout, status.stdout
    pruned = subprocess.run([sys.executable, "-m", "autoresearch", "prune"], cwd=root, capture_output=True, text=True)
    assert pruned.returncode == 0 and "the models of 2 kept experiment(s)" in pruned.stdout, pruned.stdout + pruned.stderr
    assert [bool(list((runs / str(r["id"])).glob("artifacts-seed*"))) for r in records] == [False, False, True, False]
    assert all((runs / str(r["id"]) / "run.log").exists() for r in records)  # logs stay


def test_a_candidate_whose_own_seeds_disagree_needs_a_gain_beyond_its_own_spread(tmp_path):
    from test_decide import DECIDE, NOISE_TASK, Salts

    root = make_task(tmp_path / "ws", train=NOISE_TASK, extra_config=DECIDE)
    # The first seed (the screen) is lucky; the two confirmation seeds are far apart: its mean is above the best by
    # more than 2σ of the pooled noise, but not by 2σ of its own spread.
    wild = lambda c: Proposal("wild seeds", {"train.py": c.files["train.py"].replace(
        'print(f"score: {1.0 + GAIN + noise:.6f}")',
        'print(f"score: {1.0 + GAIN + noise + {42: 0.2, 43: 0.45, 44: -0.25}.get(seed, 0):.6f}")')})
    run_session(root, tag="t", agent=Salts(0, [wild]), max_experiments=1, echo=lambda *_: None)
    baseline, record = rows(root)
    assert record["status"] == "discard" and "its own seeds' spread" in record["reason"], record["reason"]
    assert sum(json.loads(record["values_json"])) / 3 > baseline["metric"] + 0.1
