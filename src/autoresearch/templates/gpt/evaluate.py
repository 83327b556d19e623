"""Locked evaluator of the gpt task: scores the model train.py exported, in its own process.

The harness runs it after every training run with AUTORESEARCH_ARTIFACTS pointing at that run's folder; the
metric is what this prints, never what train.py printed. It loads model.pt2 (a torch.export graph: no Python
from train.py runs here), checks that the model is causal (changing later tokens must leave earlier logits
unchanged), and computes val_bpb with evaluate_bpb from prepare.py on the pinned validation split.
"""

import os
import sys

import torch

from prepare import MAX_SEQ_LEN, Tokenizer, evaluate_bpb

EVAL_BATCH_SIZE = 32
CAUSALITY_TOLERANCE = 1e-3  # largest change of an earlier logit that is still rounding


def fail(message: str) -> None:
    print(f"evaluate: {message}", file=sys.stderr)
    raise SystemExit(1)


def load_model(artifacts: str):
    path = os.path.join(artifacts, "model.pt2")
    if not os.path.exists(path):
        fail("no model.pt2 from train.py: save the trained model with torch.export.save(torch.export.export(model, "
             "(example_tokens,), dynamic_shapes=({0: torch.export.Dim('batch')},)), os.path.join("
             "os.environ['AUTORESEARCH_ARTIFACTS'], 'model.pt2')), where model(tokens) returns logits (batch, seq, vocab)")
    try:
        return torch.export.load(path).module()
    except Exception as exc:
        fail(f"model.pt2 could not be loaded ({type(exc).__name__}: {exc})")


def causality_leak(model, vocab: int, device) -> float:
    """Largest change of the logits up to position t when only tokens after t change."""
    gen = torch.Generator().manual_seed(0)
    t = MAX_SEQ_LEN // 2
    x = torch.randint(0, vocab, (2, MAX_SEQ_LEN), generator=gen)
    y = x.clone()
    y[:, t + 1:] = torch.randint(0, vocab, (2, MAX_SEQ_LEN - t - 1), generator=gen)
    with torch.no_grad():
        a, b = model(x.to(device)), model(y.to(device))
    return (a[:, : t + 1].float() - b[:, : t + 1].float()).abs().max().item()


def main() -> None:
    artifacts = os.environ.get("AUTORESEARCH_ARTIFACTS")
    if not artifacts:
        fail("AUTORESEARCH_ARTIFACTS is not set: the harness runs this after train.py")
    model = load_model(artifacts)
    tensors = list(model.parameters()) + list(model.buffers())
    device = tensors[0].device if tensors else torch.device("cpu")
    tokenizer = Tokenizer.from_directory()
    leak = causality_leak(model, tokenizer.get_vocab_size(), device)
    print("---")
    if leak > CAUSALITY_TOLERANCE:
        print(f"invalid: the model looks ahead: earlier logits moved by {leak:.4g} when only later tokens changed")
        return
    try:
        val_bpb = evaluate_bpb(model, tokenizer, EVAL_BATCH_SIZE, device=device)
    except Exception as exc:
        fail(f"the exported model failed on the validation batches ({type(exc).__name__}: {exc})")
    print(f"val_bpb: {val_bpb:.6f}")
    print(f"causality_max_diff: {leak:.3g}")


if __name__ == "__main__":
    main()
