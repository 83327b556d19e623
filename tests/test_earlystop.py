"""Early stopping: the progress-line parser, the log follower, the rule, and a real session that stops a hopeless run."""

import io
import json
import textwrap
import time

import pytest
from rich.console import Console

from autoresearch.agents.base import Proposal
from autoresearch.earlystop import MAX_LINE, MAX_READ, Curve, LogFollower, Rule, Watch, curve_path, parse_progress
from autoresearch.ledger import Ledger
from autoresearch.session import run_session
from autoresearch.status import render_status, stats
from tasks import journal_rows as rows
from tasks import make_task


@pytest.mark.parametrize("line, found", [
    ("step    25 | loss 4.1234 | lr x1.00 | 12,345 tok/s | epoch 0 | 3/60s", (25, 4.1234)),  # the gpt template
    ("loss=0.5 step=3", (3, 0.5)),
    ("[train] step: 7, train_loss: 1e-3", (7, 1e-3)),
    ("Step 12 training loss .25", (12, 0.25)),
    ("step 5: loss is nan; stopping (NaN or exploding loss)", None),
    ("step 5 | loss nan", None),
    ("step 5 | loss inf", None),
    ("step 5 | loss 1e400", None),  # overflows to inf
    ("step 9 | val_loss 2.0", None),  # only a training loss counts
    ("first step after 1.2s from start | loss 3.0", None),  # no step number
    ("loss 3.0", None),
    ("step 3", None),
    ("\x00\xff garbage \ufffd step \x07 loss", None),
    ("step 1 | loss 2.0 | " + "x" * MAX_LINE, None),  # a huge line is not a progress line
])
def test_progress_lines_are_parsed_generically_and_robustly(line, found):
    assert parse_progress(line) == found


def test_the_follower_reads_only_complete_new_lines_and_skips_overlong_and_flooded_ones(tmp_path):
    log = tmp_path / "run.log"
    log.write_bytes(b"step 1 | loss 3.0\nstep 2 | lo")
    follow = LogFollower(log)
    assert follow.new_lines() == ["step 1 | loss 3.0"]
    with open(log, "ab") as f:
        f.write(b"ss 2.5\n" + b"y" * (MAX_LINE + 10))
    assert follow.new_lines() == ["step 2 | loss 2.5"]
    with open(log, "ab") as f:
        f.write(b"y" * 100 + b" step 9 | loss 0.1\nstep 3 | loss 2.0\n")
    assert follow.new_lines() == ["step 3 | loss 2.0"]  # the end of the overlong line is dropped with it
    with open(log, "ab") as f:
        f.write(b"z" * (2 * MAX_READ) + b" step 8 | loss 0.1\nstep 4 | loss 1.9\n")
    assert follow.new_lines() == ["step 4 | loss 1.9"]  # a flood is jumped over, not read
    assert follow.new_lines() == []


def curve(*pairs, wall=None):
    return Curve([(t, i, y) for i, (t, y) in enumerate(pairs)], wall)


BEST = curve(*[(t, 3.0 / (1 + t)) for t in range(0, 11)], wall=12.0)


def behind(offset, until, start=0):
    return [(t, t, 3.0 / (1 + t) + offset) for t in range(start, until + 1)]


def test_the_rule_stops_a_run_far_behind_only_after_the_warmup_and_with_a_reference():
    rule = Rule(budget_seconds=10, warmup=0.3, margin=0.05, patience=3, min_trials=1)
    assert rule.check(behind(1.0, 3), [BEST], [[BEST]]) == ""  # its last 3 lines start before 30% of the budget
    reason = rule.check(behind(1.0, 5), [BEST], [[BEST]])
    assert reason.startswith("stopped early at 5s of the 10s budget") and "step 5" in reason
    assert rule.check(behind(1.0, 5), [], []) == ""  # no best curve: never stopped
    assert rule.check(behind(1.0, 15), [BEST], [[BEST]]) == ""  # past the end of the best's curve: no reference
    assert rule.check(behind(0.01, 8), [BEST], [[BEST]]) == ""  # within the margin
    assert rule.check(behind(-0.5, 8), [BEST], [[BEST]]) == ""  # ahead
    spike = behind(0.0, 8)
    spike[-1] = (8, 8, 9.0)  # one bad line is not enough
    assert rule.check(spike, [BEST], [[BEST]]) == ""


def test_the_rule_needs_the_median_of_the_finished_runs_and_the_worst_seed_of_the_best():
    rule = Rule(budget_seconds=10, warmup=0.3, margin=0.05, patience=3, min_trials=3)
    worse = curve(*[(t, 3.0 / (1 + t) + 2.0) for t in range(0, 11)])
    run = behind(1.0, 6)
    assert rule.check(run, [BEST], [[BEST], [worse]]) == ""  # too few finished runs for a median
    assert rule.check(run, [BEST], [[BEST], [worse], [worse]]) == ""  # better than most finished runs
    assert rule.check(run, [BEST], [[BEST], [BEST], [worse]]).startswith("stopped early")
    noisy_seed = curve(*[(t, 3.0 / (1 + t) + 1.5) for t in range(0, 11)])
    assert rule.check(run, [BEST, noisy_seed], [[BEST], [BEST], [worse]]) == ""  # the best's worst seed counts


def test_a_curve_file_that_is_not_one_is_ignored(tmp_path):
    path = tmp_path / "curve.json"
    for text in ("", "not json", "[]", '{"points": [[1, 2]]}', '{"points": [[1, 2, "nan"]]}',
                 '{"points": [[2, 1, 1.0], [1, 2, 1.0]]}'):
        path.write_text(text)
        assert Curve.load(path) is None
    assert curve_path(tmp_path / "run.log").name == "curve.json"
    assert curve_path(tmp_path / "run-seed43.log").name == "curve-seed43.json"


def test_a_watch_records_the_curve_on_the_harness_clock_whatever_the_run_claims(tmp_path):
    log = tmp_path / "run.log"
    log.write_text("step 1 | loss 3.0 | elapsed 1000s\n")
    watch = Watch(log, budget_seconds=10)
    tick = watch.ticker()
    assert tick(1.5) == ""
    log.write_text("step 1 | loss 3.0 | elapsed 1000s\nstep 2 | loss 2.0\n")

    class Out:
        wall_seconds, stopped, summary = 4.25, "", {}
    watch.finish(Out())
    data = json.loads((tmp_path / "curve.json").read_text())
    assert data["points"] == [[1.5, 1, 3.0], [4.25, 2, 2.0]] and data["wall_seconds"] == 4.25 and data["stopped"] == ""


def test_with_early_stopping_off_every_run_is_watched_only_to_record_its_curve(tmp_path):
    from types import SimpleNamespace

    from autoresearch.config import DecideSettings
    from autoresearch.earlystop import EarlyStop

    off = EarlyStop(DecideSettings(), budget_seconds=10)
    assert off.watch(SimpleNamespace(id=2, commit="c"), tmp_path / "run.log").rule is None
    on = EarlyStop(DecideSettings(early_stop=True), budget_seconds=10)  # no journal: nothing to compare with
    assert on.watch(SimpleNamespace(id=2, commit="c"), tmp_path / "run.log").rule is None


TASK = textwrap.dedent('''\
    """Prints a training-loss curve over the budget; the score is minus its final loss."""
    import os, time

    OFFSET = 0.0  # how far behind the reference curve this run's loss is

    budget = float(os.environ["AUTORESEARCH_TIME_BUDGET"])
    start, step, loss = time.monotonic(), 0, 0.0
    while time.monotonic() - start < budget:
        t = time.monotonic() - start
        loss = 1.0 + 0.1 / (1.0 + t) + OFFSET  # nearly flat: a slow start on a busy machine shifts it little
        step += 1
        print(f"step {step:5d} | loss {loss:.4f} | elapsed {t:.1f}s")
        time.sleep(0.2)
    print("---")
    print(f"score: {-loss:.6f}")
''')


class Scripted:
    name = "scripted"

    def __init__(self, *offsets):
        self.offsets = list(offsets)

    def propose(self, context):
        if not self.offsets:
            return None
        offset = self.offsets.pop(0)
        source = context.files["train.py"].replace("OFFSET = 0.0", f"OFFSET = {offset}")
        return Proposal(f"OFFSET = {offset}", {"train.py": source})

    def observe(self, result):
        pass


def test_a_run_far_behind_the_best_is_stopped_early_and_a_close_one_runs_to_its_end(tmp_path):
    budget = 6
    config = ("\n[decide]\nseeds = 1\nbaseline_seeds = 1\nearly_stop = true\nearly_stop_min_trials = 1\n"
              "early_stop_warmup = 0.3\nearly_stop_margin = 0.2\n")
    root = make_task(tmp_path / "ws", train=TASK, extra_config=config)
    started = time.monotonic()
    ledger, _ = run_session(root, tag="t", agent=Scripted(2.0, 0.002), budget=budget, max_experiments=2, echo=lambda *_: None)
    assert time.monotonic() - started < 40
    base, far, close = rows(root)
    assert base["status"] == "keep"
    assert far["status"] == "discard" and far["reason"].startswith("stopped early at "), far["reason"]
    assert far["metric"] is None and far["wall_seconds"] < budget * 0.8  # killed well before its budget
    saved = json.loads(far["summary_json"])["early_stop_saved_seconds"]
    assert saved > budget * 0.2
    assert close["status"] in ("keep", "discard") and not close["reason"].startswith("stopped early")
    assert close["metric"] is not None and close["wall_seconds"] >= budget
    runs = root / ".autoresearch" / "runs"
    for r in (base, far, close):  # every run's curve, as the harness saw it, beside its log
        recorded = Curve.load(runs / str(r["id"]) / "curve.json")
        assert recorded is not None and len(recorded.points) >= 3
        assert recorded.wall_seconds == pytest.approx(r["wall_seconds"], abs=0.01)
    assert Curve.load(runs / str(far["id"]) / "curve.json").stopped == far["reason"]
    s = stats(Ledger(root, "autoresearch/t", "score", True).rows())
    assert s["stopped_early"] == 1 and s["early_stop_saved_seconds"] == pytest.approx(saved)
    shown = io.StringIO()
    render_status(ledger, True, Console(file=shown, width=200))
    assert f"Early stopping: 1 run(s) stopped, about {saved:.0f}s of training saved" in shown.getvalue()
