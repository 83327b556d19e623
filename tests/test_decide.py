"""Noise-aware decisions through the real loop: a pure-noise task keeps (almost) nothing, real gains are kept,
a seed-only change is noise, and a run over its budget is invalid."""

import json
import re
import subprocess
import sys
import textwrap

from autoresearch.agents.base import Proposal, Usage
from autoresearch.session import run_session
from tasks import journal_rows as rows
from tasks import make_task

NOISE_TASK = textwrap.dedent('''\
    """The score is a constant plus noise that depends only on the seed and SALT: no change can really help."""
    import os
    import zlib

    import numpy as np

    SALT = 0
    GAIN = 0.0

    seed = int(os.environ["AUTORESEARCH_SEED"])
    noise = 0.05 if seed == 137 else np.random.default_rng(zlib.crc32(f"{SALT}/{seed}".encode())).normal(0, 0.01)
    print("---")
    print(f"score: {1.0 + GAIN + noise:.6f}")
''')

DECIDE = "\n[decide]\nseeds = 3\nthreshold_sigmas = 2.0\n"


class Salts:
    """Proposes a new SALT each time (a different program that changes nothing that matters), then whatever `then` says."""

    name = "salts"

    def __init__(self, n, then=()):
        self.n, self.then, self.results = n, list(then), []
        self.spent = Usage()

    def propose(self, context):
        if self.n:
            self.n -= 1
            return Proposal(f"salt {self.n}", {"train.py": re.sub(r"SALT = \d+", f"SALT = {self.n + 1}", context.files["train.py"])})
        return self.then.pop(0)(context) if self.then else None

    def observe(self, result):
        self.results.append(result)


def noise_task(tmp_path, **kw):
    return make_task(tmp_path / "ws", train=NOISE_TASK, extra_config=DECIDE, **kw)


def test_pure_noise_keeps_no_more_than_the_rule_allows(tmp_path):
    root = noise_task(tmp_path)
    agent = Salts(30)
    run_session(root, tag="t", agent=agent, max_experiments=30, echo=lambda *_: None)
    records = rows(root)
    assert len(records) == 31 and records[0]["description"] == "baseline"
    assert len(json.loads(records[0]["values_json"])) == 3  # the baseline ran once per seed
    kept = [r for r in records[1:] if r["status"] == "keep"]
    # One-sided 2σ: about 2.3% of pure-noise candidates pass the screen, and the confirmation on fresh seeds
    # stops most of those; 30 candidates should keep at most one (expected well under one).
    assert len(kept) <= 1, [(r["description"], r["metric"], r["reason"]) for r in kept]
    confirmed = [r for r in records[1:] if len(json.loads(r["values_json"])) == 3]
    assert all(r["reason"].startswith("mean of 3 seeds") for r in confirmed)


def test_an_honest_improvement_is_still_kept(tmp_path):
    root = noise_task(tmp_path)
    better = lambda c: Proposal("a real gain", {"train.py": c.files["train.py"].replace("GAIN = 0.0", "GAIN = 0.1")})
    run_session(root, tag="t", agent=Salts(0, [better]), max_experiments=1, echo=lambda *_: None)
    record = rows(root)[1]
    assert record["status"] == "keep" and len(json.loads(record["values_json"])) == 3
    assert record["metric"] > rows(root)[0]["metric"] + 0.05


def test_a_seed_only_change_comes_out_as_noise(tmp_path):
    root = noise_task(tmp_path)
    lucky = lambda c: Proposal("random seed 42→137", {"train.py": c.files["train.py"].replace('int(os.environ["AUTORESEARCH_SEED"])', "137")})
    run_session(root, tag="t", agent=Salts(0, [lucky]), max_experiments=1, echo=lambda *_: None)
    record = rows(root)[1]
    assert record["status"] == "invalid" and "the seed is ignored" in record["reason"]


def test_a_run_over_its_budget_is_invalid_whatever_it_prints(tmp_path):
    root = make_task(tmp_path / "ws", factor=10.0, extra_config="startup_allowance_seconds = 0.5\n")  # in [budget]
    overrun = lambda c: Proposal("train longer", {"train.py": "import time\ntime.sleep(2.5)\n" + c.files["train.py"].replace("LR = 0.1", "LR = 0.3")})
    run_session(root, tag="t", agent=Salts(0, [overrun]), max_experiments=1, echo=lambda *_: None)
    record = rows(root)[1]
    assert record["status"] == "invalid" and "over the budget of 1s plus 0.5s" in record["reason"]


def test_the_baseline_command_remeasures_the_best_with_fresh_seeds_and_status_shows_sigma(tmp_path):
    root = noise_task(tmp_path)
    run_session(root, tag="t", agent=Salts(1), max_experiments=1, echo=lambda *_: None)
    result = subprocess.run([sys.executable, "-m", "autoresearch", "baseline", "--tag", "t"], cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    records = rows(root)
    again = records[-1]
    assert again["description"] == "baseline (re-measured)" and again["status"] == "keep"
    assert len(set(json.loads(again["seeds_json"])) & set(json.loads(records[0]["seeds_json"]))) == 0  # fresh seeds
    assert "Noise between seeds: σ = " in result.stdout and "self-reported" in result.stdout


def test_status_counts_the_training_time_of_every_seed(tmp_path):
    from autoresearch.ledger import Ledger
    from autoresearch.status import stats

    task = NOISE_TASK.replace('print("---")', 'print("---")\nprint("training_seconds: 0.5")')
    root = make_task(tmp_path / "ws", train=task, extra_config=DECIDE)
    run_session(root, tag="t", agent=Salts(0), max_experiments=1, echo=lambda *_: None)
    ledger = Ledger(root, "autoresearch/t", "score")
    assert stats(ledger.rows())["training_seconds"] == 1.5  # the baseline's three runs
