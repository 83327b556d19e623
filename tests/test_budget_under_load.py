"""The budget check under CPU load, end to end: honest runs stay valid and a 30%-over-budget cheat is caught."""

import json
import os
import re
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from autoresearch.contention import allowed_seconds
from autoresearch.executors.local import LocalExecutor
from autoresearch.session import run_session
from tasks import journal_rows, make_task
from test_contention import calibrated_iterations
from test_gpt_integrity import HONEST, Edits, gpt_workspace

pytestmark = pytest.mark.skipif(not Path("/proc/self/schedstat").exists(),
                                reason="needs Linux /proc schedstat to measure the contention")

CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
BURNERS = max(2, CORES)  # two on the 2-core machines this is written for; one a core elsewhere, so the load stays real
BURN = "import time\nt = time.time()\nwhile time.time() - t < {seconds}: pass\n"
TRAINING = re.compile(r"\bpython train\.py\b")  # the run command, bare or inside the sandbox's supervisor
CHEAT = ("train 30% past the budget", [("TIME_BUDGET = float(", "TIME_BUDGET = 1.3 * float(")])


@contextmanager
def burners(seconds: float):
    """BURNERS CPU-bound processes, each in its own session (autogroup is on: the scheduler shares CPU between
    sessions, so burners in the test's own session would barely slow a run in another); each exits by itself after
    `seconds`, and is killed on the way out in any case."""
    procs = []
    try:
        for _ in range(BURNERS):
            procs.append(subprocess.Popen([sys.executable, "-c", BURN.format(seconds=seconds)], start_new_session=True))
        time.sleep(0.2)  # let them get going
        yield
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


@pytest.fixture
def loaded_training(monkeypatch):
    """Every training run (its command ends with `python train.py`) runs with fresh burners for its whole life, bounded
    by the run's own kill limit; evaluations run without them (they are not held to the budget). Returns the list of
    the training runs' RunOutcome, as the executor handed them to Runner.check_training, in order."""
    outcomes = []
    real_run = LocalExecutor.run

    def run(self, workspace, command, env, limit_seconds, log_path, **kwargs):
        if not TRAINING.search(command):
            return real_run(self, workspace, command, env, limit_seconds, log_path, **kwargs)
        with burners(limit_seconds + 30):
            out = real_run(self, workspace, command, env, limit_seconds, log_path, **kwargs)
        outcomes.append(out)
        return out

    monkeypatch.setattr(LocalExecutor, "run", run)
    return outcomes


def edit_config(ws: Path, *replacements) -> None:
    toml = (ws / "autoresearch.toml").read_text()
    for old, new in replacements:
        assert old in toml, old
        toml = toml.replace(old, new)
    (ws / "autoresearch.toml").write_text(toml)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "load test settings"],
                   cwd=ws, check=True)


def report(rows, outcomes, budget, allowance):
    """Print what each run took against what it was allowed (the journal keeps wall_seconds, not the dilation)."""
    print(f"\nbudget {budget:g}s, start-up allowance {allowance:g}s, {BURNERS} burners, {CORES} cores")
    for row, out in zip(rows, outcomes):
        print(f"  {row['description']:<28} {row['status']:<8} wall {row['wall_seconds']:6.1f}s  R {out.dilation:4.2f}  "
              f"allowed {allowed_seconds(budget, allowance, out.dilation):6.1f}s (quiet rule {budget + allowance:g}s)  "
              f"cpu {out.cpu_seconds or 0:5.1f}s  trained {row['summary'].get('training_seconds', '-')}s  "
              f"{row['reason'][:90]}")


def rows_with_summaries(ws):
    return [{**r, "summary": json.loads(r["summary_json"])} for r in journal_rows(ws)]


@pytest.mark.timeout(600)  # 60-100 s on 2 cores already busy with other work: one loaded run of 50-65 s, its evaluation
def test_the_integrity_suites_honest_candidate_is_not_over_budget_under_load(tmp_path, kjv_cache, monkeypatch,
                                                                          loaded_training):
    # The suite's settings (1 s budget, 25 s start-up allowance) and its honest candidate (the template's learning
    # rates), measured once, as the baseline of its own tag; the kill limit raised from 62 s (loaded gpt runs here take
    # 50-75 s: the limit must not end them before the rule does); the hidden test split is not scored (not what this
    # checks).
    ws = gpt_workspace(tmp_path, kjv_cache, monkeypatch, sandbox="auto", seeds=1)
    train = (ws / "train.py").read_text()
    for old, new in HONEST[1]:
        train = train.replace(old, new)
    (ws / "train.py").write_text(train)
    edit_config(ws, ("grace_seconds = 60", "grace_seconds = 300"),
                ('test = "python evaluate.py --split test"', ""))
    budget, allowance = 1.0, 25.0
    run_session(ws, tag="t", agent=Edits([]), budget=budget, max_experiments=0, echo=lambda *_: None)
    rows = rows_with_summaries(ws)
    report(rows, loaded_training, budget, allowance)
    assert [r["description"] for r in rows] == ["baseline"] and len(loaded_training) == 1
    honest, out = rows[0], loaded_training[0]
    assert honest["status"] == "keep", honest["reason"]  # not invalid: within budget + allowance x R
    assert honest["wall_seconds"] == pytest.approx(out.wall_seconds)
    # The load was real: the harness measured it. (Not asserted: that the wall broke the quiet-machine rule of
    # budget + allowance, 26 s: on 2 cores busy with other work it does, 50-75 s, but on an idle machine a loaded
    # gpt run may take about 2 x 12 s, and then it would not.)
    assert out.dilation >= 1.3, (out.dilation, out.wall_seconds)


# The gpt template cannot make the cheat's margin robust in minutes: its start-up (torch import, sandbox, tokenizer,
# the two excluded warm-up steps, export) is 10-17 s of quiet-machine time depending on how busy the machine is, so an
# allowance A that lets every honest run through leaves A - startup of 8+ s, and the cheat's 0.3·B must beat that
# times R: B > 8 · 2.5 / 0.3, about 70 s a run, 4+ minutes for the test. So this test uses a small python task whose
# start-up is a calibrated CPU-bound loop (dilated by contention as a real start-up is) and whose training is a
# wall-clock loop of the budget, as the gpt template's is (wall-clock: not dilated).
STARTUP_CPU = 1.0  # s of CPU before training
ALLOWANCE = 2.0
BUDGET = 16.0
# With p = the harness's own start-up (sh, sandbox, python: about 0.1-0.2 s measured) and R the run's dilation:
#   quiet (R = 1): honest ≈ 1.2 + 16 = 17.2 s ≤ 18 allowed; the cheat ≈ 1.2 + 20.8 = 22 s > 18 (by 4 s).
#   loaded: honest ≈ 1.2·R_startup + 16 ≤ 16 + 2·R while its start-up is dilated at most 1.7x the whole run's R;
#   the cheat ≈ 1.2·R + 20.8 > 16 + 2·R while R < 6 (2 burners on 2 cores busy with other work: R about 1.5-3).
TASK = '''\
"""A stand-in for a training script: a CPU-bound start-up, then a wall-clock training loop of the budget."""
import os
import time

for _ in range({iterations}):  # start-up: {cpu:g} s of CPU
    pass
TIME_BUDGET = float(os.environ["AUTORESEARCH_TIME_BUDGET"])
started = time.time()
while time.time() - started < TIME_BUDGET:
    pass
SCORE = 1.0
print("---")
print(f"score: {{SCORE}}")
'''


@pytest.mark.timeout(400)  # about 65 s: three loaded runs of 18-25 s
def test_a_run_30_percent_over_its_budget_is_invalid_under_load(tmp_path, loaded_training):
    train = TASK.format(iterations=calibrated_iterations(STARTUP_CPU), cpu=STARTUP_CPU)  # calibrated before the load
    ws = make_task(tmp_path / "ws", train=train, extra_config=f"startup_allowance_seconds = {ALLOWANCE:g}\n\n"
                                                              "[decide]\nseeds = 1\nbaseline_seeds = 1\n")
    honest = ("a better score", [("SCORE = 1.0", "SCORE = 2.0")])
    run_session(ws, tag="t", agent=Edits([honest, CHEAT]), budget=BUDGET, max_experiments=2, echo=lambda *_: None)
    rows = rows_with_summaries(ws)
    report(rows, loaded_training, BUDGET, ALLOWANCE)
    assert [r["description"] for r in rows] == ["baseline", "a better score", "train 30% past the budget"]
    assert len(loaded_training) == 3
    baseline, better, cheat = rows
    assert baseline["status"] == "keep", baseline["reason"]
    assert better["status"] == "keep", better["reason"]
    assert cheat["status"] == "invalid", (cheat["status"], cheat["reason"], cheat["wall_seconds"])
    assert "over the budget of 16s plus 2s of start-up allowance" in cheat["reason"], cheat["reason"]
    assert "x for CPU contention" in cheat["reason"], cheat["reason"]
    for row, out in zip(rows, loaded_training):
        assert row["wall_seconds"] == pytest.approx(out.wall_seconds)
        assert out.dilation >= 1.2, (row["description"], out.dilation, out.wall_seconds)  # the load was real
