"""The gpt template's evaluate.py against real exported models that try to fool its causality probe.

Each model is a tiny torch module exported with torch.export (dynamic batch dimension, as train.py does) into
a temporary artifacts folder; evaluate.py then runs as the harness runs it, `python evaluate.py` in a fresh
folder holding a copy of the template's evaluate.py and prepare.py, on the session's kjv cache, and the test
reads the metrics.json it wrote there. The models build their logits from a causal bigram table, plus, where
they cheat, a large bonus on the next input token (a look-ahead) under some condition.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn
import torch.nn.functional as F

TEMPLATE_DIR = Path(__file__).resolve().parents[1] / "src" / "autoresearch" / "templates" / "gpt"
V = 1024  # the session kjv tokenizer's vocabulary (conftest's kjv_cache), VOCAB_SIZE on CPU
T = 256  # MAX_SEQ_LEN on CPU (the evaluator runs with CUDA hidden)
B = 32  # evaluate.py's EVAL_BATCH_SIZE
BOS = 1023  # the kjv tokenizer's BOS: the one special token, after the 1023 merges
DATASET = "kjv"


class Model(nn.Module):
    """logits[b, t] = table[x[b, t]], plus 20 * onehot(x[b, t + 1]) where `peek` holds (a look-ahead).

    peek: None (causal), "always", "bos_rows" (only in rows that start with BOS: real-looking rows, as every
    evaluation row is), "late" (only at positions after 3T/4). poison: None, "nan" (a NaN column in every
    logit row), or a token id (infinite logits at the positions that hold it: causal, but not finite).
    """

    def __init__(self, peek=None, poison=None, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.table = nn.Embedding(V, V)
        self.bonus = nn.Embedding(V, V)
        with torch.no_grad():
            self.table.weight.copy_(torch.randn(V, V, generator=g))
            self.bonus.weight.copy_(20 * torch.eye(V))
        self.peek, self.poison = peek, poison

    def forward(self, x):
        logits = self.table(x)
        if self.peek is not None:
            following = torch.cat([x[:, 1:], x[:, :1]], dim=1)  # x[b, t + 1] (the last position wraps to BOS)
            position = torch.arange(x.size(1), device=x.device)[None, :]
            gate = {"always": torch.ones_like(x, dtype=torch.bool),
                    "bos_rows": (x[:, :1] == BOS).expand_as(x),
                    "late": (position > 3 * x.size(1) // 4).expand_as(x)}[self.peek]
            logits = logits + self.bonus(following) * gate[..., None].float()
        if self.poison == "nan":
            logits = torch.cat([logits[..., :-1], torch.full_like(logits[..., -1:], float("nan"))], dim=-1)
        elif self.poison is not None:
            logits = logits + torch.where(x == self.poison, float("inf"), 0.0)[..., None]
        return logits


class Attention(nn.Module):
    """An honest model with the parts a real one has: causal attention (SDPA), eval-mode dropout, a residual."""

    def __init__(self, d=16):
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.qkv, self.out = nn.Embedding(V, d), nn.Linear(d, 3 * d), nn.Linear(d, V)
        self.drop = nn.Dropout(0.1)

    def forward(self, x):
        h = self.embed(x)
        q, k, v = self.qkv(h).unsqueeze(1).chunk(3, dim=-1)
        h = h + F.scaled_dot_product_attention(q, k, v, is_causal=True).squeeze(1)
        return self.out(self.drop(h))


class Counter(Model):
    """Causal for its first two calls (the probe's two), then looks ahead: it counts its calls in a buffer."""

    def __init__(self):
        super().__init__(peek="always")
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        self.calls.add_(1)
        cheat = (self.calls > 2).float()
        return self.table(x) + cheat * (super().forward(x) - self.table(x))


class Latch(Model):
    """Causal until it sees `token` (which the probe's batches lack), then looks ahead: it remembers in a buffer."""

    def __init__(self, token):
        super().__init__(peek="always")
        self.token = token
        self.register_buffer("seen", torch.zeros(()))

    def forward(self, x):
        self.seen.copy_(torch.maximum(self.seen, (x == self.token).any().float()))
        return self.table(x) + self.seen * (super().forward(x) - self.table(x))


class Lucky(Model):
    """Causal when its first random draw is one of the first two the evaluator's fresh process would give (the
    probe's two calls, under torch's default seed), else looks ahead: it tells calls apart by the random stream."""

    def __init__(self):
        super().__init__(peek="always")
        g = torch.Generator().manual_seed(67280421310721)  # torch's default seed in a fresh process
        self.register_buffer("probe_draws", torch.rand(2, generator=g))

    def forward(self, x):
        draw = torch.rand(())
        cheat = 1.0 - (draw == self.probe_draws).any().float()
        return self.table(x) + cheat * (super().forward(x) - self.table(x))


def old_probe_leak(model) -> float:
    """The probe evaluate.py had before: two rows of uniform random tokens, the second half redrawn."""
    gen = torch.Generator().manual_seed(0)
    t = T // 2
    x = torch.randint(0, V, (2, T), generator=gen)
    y = x.clone()
    y[:, t + 1:] = torch.randint(0, V, (2, T - t - 1), generator=gen)
    with torch.no_grad():
        a, b = model(x), model(y)
    return (a[:, : t + 1].float() - b[:, : t + 1].float()).abs().max().item()


def old_probe_passes(model) -> bool:
    return not old_probe_leak(model) > 1e-3  # its test: NaN compares False, so a NaN leak passed


def first_batches(prepare, tok) -> dict[int, int]:
    """token -> the scoring batch (1-based, as evaluate_bpb counts them) where it first appears in the val split."""
    first_in = {}
    for n, (x, _, _) in enumerate(prepare.make_dataloader(tok, B, T, "val", epochs=1, dataset=DATASET), 1):
        if n > prepare.EVAL_TOKENS // (B * T):
            break
        for token in x.flatten().tolist():
            first_in.setdefault(token, n)
    return first_in


def load_prepare(cache):
    spec = importlib.util.spec_from_file_location("gpt_prepare_probe_suite", TEMPLATE_DIR / "prepare.py")
    prepare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prepare)
    return prepare, prepare.Tokenizer.from_directory(cache / DATASET / f"tokenizer-{V}")


def export_to(root, model) -> Path:
    """Export `model` as train.py does into root/artifacts/model.pt2; the evaluator will work in root/evaluator."""
    artifacts = root / "artifacts"
    artifacts.mkdir(parents=True)
    (root / "evaluator").mkdir()
    program = torch.export.export(model.eval(), (torch.zeros((2, T), dtype=torch.long),),
                                  dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},))
    torch.export.save(program, artifacts / "model.pt2")
    return root


# One process runs the template's evaluate.main() on each model in turn, as the harness runs `python evaluate.py`
# once per model (its working folder, its AUTORESEARCH_ARTIFACTS): one torch import instead of eight.
DRIVER = """\
import contextlib, io, os, sys
sys.path.insert(0, sys.argv[1])
import evaluate
for root in sys.argv[2:]:
    os.chdir(os.path.join(root, "evaluator"))
    os.environ["AUTORESEARCH_ARTIFACTS"] = os.path.join(root, "artifacts")
    out, code = io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            evaluate.main([])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    with open(os.path.join(root, "result.txt"), "w") as f:
        f.write(f"{code}\\n" + out.getvalue())
"""


@dataclass
class Evaluated:
    returncode: int
    output: str  # stdout and stderr
    metrics: dict | None  # its metrics.json
    root: Path  # artifacts/ (model.pt2, fingerprint.json) and evaluator/
    batch: int = 0  # "poison" only: the scoring batch where its logits turn infinite


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, kjv_cache):
    """name -> Evaluated for every model below. The evaluators run at once, each in its own process, as the
    harness would run them one by one. "poison" and "latch" key on a token first seen in scoring batch
    evaluated["poison"].batch, after the two batches the probe reads (1: scored, 2: donor rows)."""
    prepare, tok = load_prepare(kjv_cache)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUTORESEARCH_CACHE", str(kjv_cache))
        first_in = first_batches(prepare, tok)
    poison = min(t for t, n in first_in.items() if n >= 3)
    models = {"honest": Attention(), "nan": Model(peek="always", poison="nan"), "bos_rows": Model(peek="bos_rows"),
              "late": Model(peek="late"), "poison": Model(poison=poison), "counter": Counter(), "latch": Latch(poison),
              "lucky": Lucky()}
    base = tmp_path_factory.mktemp("probe")
    roots = {name: export_to(base / name, model) for name, model in models.items()}
    env = {**os.environ, "AUTORESEARCH_CACHE": str(kjv_cache), "CUDA_VISIBLE_DEVICES": "", "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run([sys.executable, "-c", DRIVER, str(TEMPLATE_DIR), *map(str, roots.values())], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    results = {}
    for name, root in roots.items():
        code, _, out = (root / "result.txt").read_text().partition("\n")
        path = root / "evaluator" / "metrics.json"
        results[name] = Evaluated(int(code), out, json.loads(path.read_text()) if path.exists() else None, root)
    results["poison"].batch = first_in[poison]
    return results


@pytest.fixture
def kjv(prepare, kjv_cache, monkeypatch):
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(kjv_cache))
    tok = prepare.Tokenizer.from_directory(prepare.tokenizer_dir(DATASET, V))
    assert tok.get_vocab_size() == V and tok.get_bos_token_id() == BOS and prepare.MAX_SEQ_LEN == T
    return prepare, tok


def result(evaluated, name) -> dict:
    run = evaluated[name]
    assert run.returncode == 0, run.output
    if "invalid" in run.metrics:
        assert f"invalid: {run.metrics['invalid']}" in run.output  # printed too, as the harness's summary block reads it
    return run.metrics


# ---------------------------------------------------------------------------
# Honest models are scored
# ---------------------------------------------------------------------------

def test_an_honest_model_gets_a_finite_score(evaluated):
    name = "honest"  # causal attention, eval-mode dropout: graph nodes that random_draws must let through
    metrics = result(evaluated, name)
    assert "invalid" not in metrics, metrics
    assert math.isfinite(metrics["val_bpb"]) and metrics["val_bpb"] > 0.5
    assert metrics["causality_max_diff"] <= 1e-3
    assert {"load_seconds", "probe_seconds", "score_seconds"} <= metrics.keys()
    assert json.loads((evaluated[name].root / "artifacts" / "fingerprint.json").read_text())


# ---------------------------------------------------------------------------
# Look-aheads the old probe missed
# ---------------------------------------------------------------------------

def test_a_look_ahead_with_nan_logits_is_invalid(evaluated):
    assert old_probe_passes(Model(peek="always", poison="nan"))  # its leak was NaN, and NaN > tolerance is False
    metrics = result(evaluated, "nan")
    assert metrics["invalid"] == "the model's logits are not finite (nan) on evaluation rows (the causality probe)"


def test_a_look_ahead_on_real_looking_rows_only_is_invalid(evaluated, kjv):
    prepare, tok = kjv
    model = Model(peek="bos_rows")
    # The old probe's rows were uniform random tokens: a row starts with BOS 1 time in V, and neither of its
    # two did, so it saw only the causal branch...
    assert old_probe_passes(model)
    # ... while every evaluation row starts with BOS, so the look-ahead scores near 0 bits per byte.
    assert prepare.evaluate_bpb(model, tok, B, split="val", dataset=DATASET) < 0.05
    metrics = result(evaluated, "bos_rows")
    assert metrics["invalid"].startswith("the model looks ahead: earlier logits moved by ")
    assert metrics["causality_max_diff"] > 1


def test_a_look_ahead_at_late_positions_only_is_invalid(evaluated):
    assert old_probe_passes(Model(peek="late"))  # it compared positions up to T/2 only
    metrics = result(evaluated, "late")
    assert metrics["invalid"].startswith("the model looks ahead")


# ---------------------------------------------------------------------------
# Non-finite logits in scoring, after the probe
# ---------------------------------------------------------------------------

def test_infinite_logits_on_a_later_scoring_batch_are_invalid(evaluated):
    """A causal model whose logits are infinite only where a token appears that the probe's batches lack."""
    batch = evaluated["poison"].batch
    assert batch >= 3
    metrics = result(evaluated, "poison")
    assert metrics["invalid"] == f"the model's logits are not finite (inf) on evaluation rows (val batch {batch})"
    assert metrics["causality_max_diff"] == 0


# ---------------------------------------------------------------------------
# Models that tell the probe's calls from scoring's by something besides their input
# ---------------------------------------------------------------------------

def test_a_model_that_counts_its_calls_is_invalid(evaluated):
    metrics = result(evaluated, "counter")
    assert metrics["invalid"] == "the model changes its own state when called ('calls' changed during the causality probe)"


def test_a_model_that_changes_its_state_during_scoring_only_is_invalid(evaluated):
    metrics = result(evaluated, "latch")
    assert metrics["invalid"] == "the model changes its own state when called ('seen' changed during scoring)"
    assert metrics["causality_max_diff"] == 0  # the probe saw it causal


def test_a_model_that_draws_random_numbers_is_invalid(evaluated):
    metrics = result(evaluated, "lucky")
    assert metrics["invalid"] == ("the model draws random numbers (aten.rand.default): its logits must depend on "
                                  "its input tokens only")


# ---------------------------------------------------------------------------
# The probe's batches, in process
# ---------------------------------------------------------------------------

def test_the_probe_batches_are_real_rows(kjv, monkeypatch):
    prepare, tok = kjv
    monkeypatch.setitem(sys.modules, "prepare", prepare)  # what evaluate.py imports
    spec = importlib.util.spec_from_file_location("gpt_evaluate_under_test", TEMPLATE_DIR / "evaluate.py")
    evaluate_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(evaluate_module)
    x, y, cuts = evaluate_module.probe_batches(tok, "val", "cpu")
    loader = prepare.make_dataloader(tok, B, T, "val", epochs=1)
    first, second = next(loader)[0], next(loader)[0]
    assert torch.equal(x, first)  # exactly the first batch scoring reads
    assert x.shape == y.shape == (B, T) and (y[:, 0] == BOS).all()
    for i, t in enumerate(cuts.tolist()):
        assert 0 <= t <= T - 2
        assert torch.equal(y[i, : t + 1], x[i, : t + 1])  # its own prefix ...
        assert torch.equal(y[i, t + 1:], second[i, t + 1:])  # ... then a real row's tail, from another batch
        assert y[i, t + 1] != x[i, t + 1]
    assert len(set(cuts.tolist())) > B // 2 and min(cuts) < T // 4 and max(cuts) > 3 * T // 4
    assert torch.equal(evaluate_module.probe_batches(tok, "val", "cpu")[2], cuts)  # a fixed seed
