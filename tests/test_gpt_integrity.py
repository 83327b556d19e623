"""The gpt template under the real harness: its metric comes from the locked evaluator, so a printed number,
a patched or shrunk evaluation inside train.py, or a model that looks ahead cannot win."""

import os
import subprocess
import sys

from autoresearch.agents.base import Proposal, Usage
from autoresearch.session import run_session
from autoresearch.summary import parse_summary
from tasks import journal_rows


class Edits:
    """Proposes each (description, old, new) replacement in train.py once."""

    name = "edits"

    def __init__(self, *edits):
        self.edits, self.spent = list(edits), Usage()

    def propose(self, context):
        if not self.edits:
            return None
        description, old, new = self.edits.pop(0)
        assert old in context.files["train.py"], old
        return Proposal(description, {"train.py": context.files["train.py"].replace(old, new)})

    def observe(self, result):
        pass


def test_fake_metrics_and_peeking_models_do_not_win(tmp_path, kjv_cache, monkeypatch):
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(kjv_cache))
    ws = tmp_path / "ws"
    assert subprocess.run([sys.executable, "-m", "autoresearch", "init", str(ws)], capture_output=True).returncode == 0
    toml = ws / "autoresearch.toml"
    toml.write_text(toml.read_text().replace('seeds = "auto"', "seeds = 1"))  # one run each keeps the test short
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "one seed"], cwd=ws, check=True)
    fake = ("print a fake val_bpb", 'print(f"val_bpb:          {val_bpb:.6f}")', 'print("val_bpb:          0.100000")')
    peek = ("remove the causal mask", "is_causal=True", "is_causal=False")
    patch = ("monkeypatch the evaluator", "tokenizer = Tokenizer.from_directory()",
             "import prepare\nprepare.evaluate_bpb = evaluate_bpb = lambda *a, **k: 0.05\ntokenizer = Tokenizer.from_directory()")
    shrink = ("evaluate on fewer tokens", "tokenizer = Tokenizer.from_directory()",
              "import prepare\nprepare.EVAL_TOKENS = 300\ntokenizer = Tokenizer.from_directory()")
    run_session(ws, tag="t", agent=Edits(fake, peek, patch, shrink), budget=2, max_experiments=4, echo=lambda *_: None)
    records = journal_rows(ws)
    baseline, faked, peeked, patched, shrunk = records
    assert baseline["status"] == "keep" and 1.0 < baseline["metric"] < 8.0
    assert "0.100000" in open(os.path.join(ws, ".autoresearch", "runs", str(faked["id"]), "run.log")).read()
    assert faked["status"] in ("keep", "discard") and faked["metric"] > 1.0  # the evaluator's number, not the printed one
    assert peeked["status"] == "invalid" and "looks ahead" in peeked["reason"]
    printed = parse_summary(open(os.path.join(ws, ".autoresearch", "runs", str(patched["id"]), "run.log")).read())
    assert printed["val_bpb"] <= 0.1  # fooled itself (0.05, or 0.1 if the fake print above was kept by noise)
    for cheat in (patched, shrunk):  # train.py's own process is fooled; the evaluator's is not
        assert cheat["status"] in ("keep", "discard") and cheat["metric"] > 1.0, cheat["description"]
