"""Locked evaluator of the gpt task: scores the model train.py exported, in its own process.

The harness runs it after every training run with AUTORESEARCH_ARTIFACTS pointing at that run's folder; the
metric is what this prints, never what train.py printed. It loads model.pt2 (a torch.export graph: no Python
from train.py runs here), checks that the model is causal (changing later tokens must leave earlier logits
unchanged), and computes val_bpb with evaluate_bpb from prepare.py on the pinned validation split, written
to metrics.json in its working folder (a fresh copy of the commit made by the harness) and printed. It also
writes fingerprint.json, a fixed sample of the model's weights, so the harness can tell whether runs with
different seeds trained different models. With --split test (kept candidates only) it prints test_bpb
on the hidden test split, which training never reads.
"""

import argparse
import json
import os
import sys
import time

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


def fingerprint(model, samples: int = 256) -> list[float]:
    """A fixed sample of every weight tensor, each divided by its RMS: runs with different seeds start from
    different random weights and end far apart (relative distance near 1.4); one seed run twice ends close."""
    values = []
    for name, tensor in sorted(model.state_dict().items()):
        if not tensor.is_floating_point() or tensor.numel() == 0:
            continue
        flat = tensor.detach().float().flatten().cpu()
        picked = flat[torch.linspace(0, flat.numel() - 1, min(samples, flat.numel())).long()]
        rms = flat.pow(2).mean().sqrt().item() or 1.0
        values += [float(f"{v:.6g}") for v in (picked / rms).tolist()]
    return values


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Score the model train.py exported (run by the harness).")
    parser.add_argument("--split", choices=("val", "test"), default="val", help="test: the hidden split, kept candidates only")
    split = parser.parse_args(argv).split
    artifacts = os.environ.get("AUTORESEARCH_ARTIFACTS")
    if not artifacts:
        fail("AUTORESEARCH_ARTIFACTS is not set: the harness runs this after train.py")
    t0 = time.time()
    model = load_model(artifacts)
    tensors = list(model.parameters()) + list(model.buffers())
    device = tensors[0].device if tensors else torch.device("cpu")
    tokenizer = Tokenizer.from_directory()
    t1 = time.time()
    leak = causality_leak(model, tokenizer.get_vocab_size(), device)
    t2 = time.time()
    if split == "val":
        with open(os.path.join(artifacts, "fingerprint.json"), "w") as f:
            json.dump(fingerprint(model), f)
    print("---")
    if leak > CAUSALITY_TOLERANCE:
        reason = f"the model looks ahead: earlier logits moved by {leak:.4g} when only later tokens changed"
        with open("metrics.json", "w") as f:
            json.dump({"invalid": reason, "causality_max_diff": leak}, f)
        print(f"invalid: {reason}")
        return
    try:
        bpb = evaluate_bpb(model, tokenizer, EVAL_BATCH_SIZE, device=device, split=split)
    except Exception as exc:
        fail(f"the exported model failed on the {split} batches ({type(exc).__name__}: {exc})")
    metrics = {f"{split}_bpb": bpb, "causality_max_diff": leak, "load_seconds": t1 - t0, "probe_seconds": t2 - t1,
               "score_seconds": time.time() - t2}
    with open("metrics.json", "w") as f:  # in the evaluator's own fresh folder, where training never wrote
        json.dump(metrics, f)
    for key, value in metrics.items():
        print(f"{key}: {value:.6f}" if key.endswith("_bpb") else f"{key}: {value:.3g}")


if __name__ == "__main__":
    main()
