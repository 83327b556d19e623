"""Journals for the report's tests and benchmark, written through the real Ledger API (start, set_commit, bill,
finish, set_test), with the clock of a night's run laid over the rows afterwards."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path

from autoresearch.agents.base import Usage
from autoresearch.ledger import Ledger

IDEAS = [
    "increase learning rate to 0.04", "switch to SwiGLU activation in the MLP", "add QK-norm before rotary embeddings",
    "reduce depth from 8 to 6 layers and widen to 640", "warmup 200 steps then cosine decay to 10%",
    "tie input and output embeddings", "use Muon for all matrix parameters", "lower weight decay to 0.01",
    "halve the batch size and double the learning rate", "remove dropout entirely", "value embeddings on alternate layers",
    "sliding window attention on even layers", "logit soft-capping at 15", "initialise the output projection to zero",
    "bf16 for the optimizer state", "increase the vocabulary-sized head learning rate", "ReLU squared instead of GELU",
    "gradient clipping at 1.0", "shorter sequence length 1024 with more steps", "random seed 42 -> 137",
    "rotary base 10000 -> 50000", "per-head learnable temperature", "fewer KV heads (GQA 4:1)",
    "momentum warmup for Muon from 0.85 to 0.95", "drop the final RMSNorm", "embedding scale by sqrt(d_model)",
]


@dataclass
class Spec:
    """One row to write: what it is, who ran it, under which node, and what it cost."""
    status: str  # keep | discard | crash | timeout | invalid | running
    metric: float | None = None
    description: str = "an idea"
    parent: int | None = None  # index into the specs (None: the current best keep, or the root for the first)
    worker: int = 0
    strategy: str | None = "greedy"
    test_metric: float | None = None
    values: list = field(default_factory=list)
    reason: str = ""
    log_tail: str = ""
    propose: float = 10.0  # agent seconds
    wall: float = 60.0  # the run's process, as the harness timed it
    training: float = 50.0  # what the script's summary block says it trained
    evaluation: float = 3.0  # the locked evaluator
    experiment: float = 80.0  # the whole experiment
    tokens: tuple = (0, 0, 0, 0.0)  # input, output, calls, dollars
    attempt: int = 0


def sha(i: int) -> str:
    return hashlib.sha1(f"commit {i}".encode()).hexdigest()


def diff_for(description: str, i: int) -> str:
    return (f"--- a/train.py\n+++ b/train.py\n@@ -{10 + i},3 +{10 + i},3 @@\n # {description}\n"
            f"-LR = 0.{i % 9 + 1}\n+LR = 0.{(i + 3) % 9 + 1}\n WARMUP = 100\n")


def write(root: Path, specs: list[Spec], maximize: bool = False, metric: str = "val_bpb", tag: str = "t",
          t0: float = 1_700_000_000.0) -> Ledger:
    """Write the specs as journal rows of autoresearch/<tag> in `root`, one after another from `t0`."""
    ledger = Ledger(root, f"autoresearch/{tag}", metric, maximize)
    ledger.results_path = None  # the tag's own results.tsv only
    ids, best_commit, best_id, clock = [], None, None, t0
    for i, s in enumerate(specs):
        baseline = i == 0
        parent_id = ids[s.parent] if s.parent is not None else (None if baseline else best_id)
        parent_commit = sha(s.parent) if s.parent is not None else (best_commit or sha(0))
        row = ledger.start(parent_commit, sha(0) if baseline else None, "baseline" if baseline else s.description,
                           "baseline" if baseline else "scripted", "", f"hash{i}", 42, attempt=s.attempt,
                           propose_seconds=0.0 if baseline else s.propose, started_at=clock, worker=s.worker,
                           parent_id=parent_id, strategy=s.strategy)
        ids.append(row)
        if not baseline:
            ledger.set_commit(row, sha(i), f"refs/autoresearch/{tag}/{row}", diff_for(s.description, i))
        if any(s.tokens):
            ledger.bill(row, Usage(s.tokens[0], s.tokens[1], s.tokens[3], s.tokens[2]))
        if s.status == "running":
            continue
        measured = s.status in ("keep", "discard")
        summary = {"training_seconds": s.training, "all_runs_evaluation_seconds": s.evaluation} if s.wall else {}
        ledger.finish(row, s.status, s.reason, s.metric if measured else None, summary, s.wall or None, s.log_tail,
                      s.values or ([s.metric] if measured else []), [42])
        if s.test_metric is not None:
            ledger.set_test(row, s.test_metric, [s.test_metric])
        ledger.db.execute("UPDATE experiments SET ended_at = ?, experiment_seconds = ? WHERE id = ?",
                          (clock + s.experiment, s.experiment, row))
        clock += s.experiment
        if s.status == "keep":
            best_commit, best_id = sha(0) if baseline else sha(i), row
    return ledger


def night(n: int, kept: int, maximize: bool = False, workers: int = 1, strategy: str = "greedy", seed: int = 0,
          running: int = 0, keeps: set | None = None) -> list[Spec]:
    """A night of `n` experiments (the baseline first) with `kept` keeps after it, improving one after another,
    discards scattered above the best (some far), and about 5% crashes, 2% timeouts and 1% invalid runs."""
    rng = random.Random(seed)
    sgn = 1.0 if maximize else -1.0
    base = 0.5 if maximize else 1.0
    keeps = set(keeps) if keeps is not None else set(rng.sample(range(1, n), kept))
    specs, best, sigma = [], base, 0.002
    for i in range(n):
        idea = rng.choice(IDEAS) + ("" if rng.random() < 0.6 else f" ({rng.choice(['v2', 'and retune', 'again', 'per layer'])})")
        tokens = (rng.randint(2000, 9000), rng.randint(200, 1500), 1, round(rng.uniform(0.002, 0.02), 4))
        common = dict(description=idea, worker=i % workers, strategy=strategy, tokens=tokens,
                      propose=rng.uniform(5, 30), wall=rng.uniform(55, 75), experiment=rng.uniform(80, 120))
        if i == 0:
            specs.append(Spec("keep", base, values=[base, base + sigma, base - sigma], test_metric=base + 0.004,
                              **{**common, "tokens": (0, 0, 0, 0.0), "description": "baseline"}))
            continue
        parent = rng.randrange(0, i) if strategy == "tree" and rng.random() < 0.3 and specs[-1].status != "running" else None
        if parent is not None and specs[parent].status not in ("keep", "discard"):
            parent = None
        if i in keeps:
            best = best + sgn * rng.uniform(0.003, 0.02)
            specs.append(Spec("keep", best, values=[best, best + sgn * 0.001], test_metric=best - sgn * rng.uniform(-0.004, 0.006),
                              parent=parent, **common))
            continue
        roll = rng.random()
        if roll < 0.05:
            specs.append(Spec("crash", reason="exit code 1", log_tail="Traceback (most recent call last):\n"
                              "  File \"train.py\", line 12\nRuntimeError: CUDA out of memory", **common))
        elif roll < 0.07:
            specs.append(Spec("timeout", reason="killed after 300s (budget 240s)", **common))
        elif roll < 0.08:
            specs.append(Spec("invalid", reason="the causality probe failed: logits at t depend on tokens after t", **common))
        else:
            worse = abs(rng.gauss(0, 0.01)) + (rng.uniform(0.05, 0.4) if rng.random() < 0.05 else 0.0)
            specs.append(Spec("discard", best - sgn * worse, parent=parent, reason="not better than the best beyond 2σ",
                              **common))
    for s in specs[len(specs) - running:] if running else []:
        s.status, s.metric = "running", None
    return specs
