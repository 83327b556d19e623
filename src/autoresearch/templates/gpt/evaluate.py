"""Locked evaluator of the gpt task: scores the model train.py exported, in its own process.

The harness runs it after every training run with AUTORESEARCH_ARTIFACTS pointing at that run's folder; the
metric is what this prints, never what train.py printed. It loads model.pt2 (a torch.export graph: no Python
from train.py runs here), checks that the model is causal (changing later tokens must leave earlier logits
unchanged, on real evaluation rows: see probe_batches), and computes val_bpb with evaluate_bpb from prepare.py
on the pinned validation split, written to metrics.json in its working folder (a fresh copy of the commit made
by the harness) and printed. A model that looks ahead, or whose logits are not finite (NaN or infinite, in the
probe or anywhere in scoring), gets {"invalid": reason} instead, and the evaluator still exits 0. It also
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

from prepare import EVAL_TOKENS, MAX_SEQ_LEN, NonFiniteLogits, Tokenizer, evaluate_bpb, make_dataloader, non_finite_kinds

EVAL_BATCH_SIZE = 32
CAUSALITY_TOLERANCE = 1e-3  # largest change of an earlier logit that is still rounding
PROBE_SEED = 0  # the probe's cut positions


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
        return torch.export.load(path)
    except Exception as exc:
        fail(f"model.pt2 could not be loaded ({type(exc).__name__}: {exc})")


def random_draws(program) -> str:
    """Why the graph is not a function of its input tokens, when it draws random numbers ("" if it draws none).

    A model that did could tell the probe's calls from scoring's (by where the random stream stands, or by
    luck); eval-mode dropout (train=False, dropout_p=0, as in scaled_dot_product_attention) draws nothing.
    """
    for graph_module in program.graph_module.modules():
        nodes = graph_module.graph.nodes if isinstance(graph_module, torch.fx.GraphModule) else ()
        for node in nodes:
            if node.op != "call_function" or torch.Tag.nondeterministic_seeded not in getattr(node.target, "tags", ()):
                continue
            schema = getattr(node.target, "_schema", None)
            schema = schema.arguments if schema is not None else []
            args = {a.name: a.default_value for a in schema if a.has_default_value()}
            args.update(zip((a.name for a in schema), node.args), **node.kwargs)
            if args.get("train", args.get("training")) is False or args.get("dropout_p", 1) == 0:
                continue
            return f"the model draws random numbers ({node.target}): its logits must depend on its input tokens only"
    return ""


def model_state(model) -> dict[str, torch.Tensor]:
    """Every tensor the graph reads besides its input (parameters, buffers, lifted constants), by name."""
    state = {}
    for prefix, module in model.named_modules(remove_duplicate=False):
        for name, value in vars(module).items():
            for key, tensor in (value.items() if name in ("_parameters", "_buffers") else [(name, value)]):
                if isinstance(tensor, torch.Tensor):
                    state[f"{prefix}.{key}" if prefix else key] = tensor
    return state


def state_changed(model, before: dict[str, torch.Tensor], when: str) -> str:
    """Why the model is invalid when a tensor of its state differs from `before` ("" if none does): a model that
    keeps state between calls could count them, and behave during the probe as it does not during scoring."""
    for name, tensor in model_state(model).items():
        old = before.get(name)
        same = old is not None and old.shape == tensor.shape and old.dtype == tensor.dtype and (
            torch.equal(old, tensor) or (tensor.is_floating_point() and torch.equal(old.isnan(), tensor.isnan())
                                         and torch.equal(old.nan_to_num(0.0), tensor.nan_to_num(0.0))))
        if not same:
            return f"the model changes its own state when called ({name!r} changed {when})"
    return ""


def probe_batches(tokenizer, split: str, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(x, y, cuts): x is the first batch that evaluate_bpb scores, exactly as its loader yields it; y is x with
    the tokens after cuts[i] of row i replaced by those of another real row, at the same positions; None when the
    split holds no row.

    So every row of y is still BOS-started real text, like the rows of x: a model cannot tell the probe from
    scoring. The donor rows come from the next batch (from x itself, rotated, when there is none), so y holds
    nothing of x's own continuations. Each cut is drawn with a fixed seed, uniformly over the positions 0..T-2
    where the donor's next token differs from the row's own: a look-ahead at position t is caught by the rows cut
    at t (or just before it, for a model that looks further ahead).
    """
    loader = make_dataloader(tokenizer, EVAL_BATCH_SIZE, MAX_SEQ_LEN, split, device=device, epochs=1)
    rows = EVAL_TOKENS // MAX_SEQ_LEN  # evaluate_bpb's cap, in whole rows
    x = next(loader, (None,))[0]
    if x is None:
        return None
    x = x[:rows]
    n, T = x.shape
    spare = next(loader, (None,))[0]  # real rows too, never in the same call as x
    if spare is not None:
        donors = spare[torch.arange(n, device=spare.device) % spare.size(0)]
    else:
        donors = x.roll(-1, 0) if n > 1 else x.roll(T // 2, 1)
    differs = (x[:, 1:] != donors[:, 1:]).cpu()  # differs[i, t]: the cut at t changes row i's token t + 1
    gen = torch.Generator().manual_seed(PROBE_SEED)
    cuts = []
    for i in range(n):
        choices = differs[i].nonzero().flatten() if differs[i].any() else torch.arange(T - 1)
        cuts.append(int(choices[torch.randint(len(choices), (1,), generator=gen)]))
    cuts = torch.tensor(cuts, device=x.device)
    keep = torch.arange(T, device=x.device)[None, :] <= cuts[:, None]
    return x, torch.where(keep, x, donors), cuts


def causality_probe(model, x: torch.Tensor, y: torch.Tensor, cuts: torch.Tensor) -> tuple[float | None, str]:
    """(leak, reason): leak is the largest change of row i's logits at positions <= cuts[i] between model(x) and
    model(y), two separate calls (never one batch mixing rows with their perturbations); reason is "" for a
    causal model with finite logits, else why the model is invalid (leak is None when the logits are not finite)."""
    with torch.no_grad():
        a = model(x)  # the very call scoring starts with
        b = model(y)
    kinds = []
    for logits in (a, b):
        if not isinstance(logits, torch.Tensor) or logits.dim() != 3 or tuple(logits.shape[:2]) != tuple(x.shape):
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            fail(f"the model returned {shape} for tokens of shape {tuple(x.shape)}, not logits (batch, seq, vocab)")
        kinds += [k for k in non_finite_kinds(logits.float()).split(", ") if k and k not in kinds]
    if kinds:
        return None, f"the model's logits are not finite ({', '.join(kinds)}) on evaluation rows (the causality probe)"
    rows = [(a[i, : t + 1].float() - b[i, : t + 1].float()).abs().max() for i, t in enumerate(cuts.tolist())]
    leak = torch.stack(rows).max().item()
    if leak > CAUSALITY_TOLERANCE:
        return leak, f"the model looks ahead: earlier logits moved by {leak:.4g} when only later tokens changed"
    return leak, ""


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


def invalid(reason: str, metrics: dict) -> None:
    """An invalid result: the evaluator itself succeeded (exit 0), the model cannot be scored."""
    with open("metrics.json", "w") as f:
        json.dump({"invalid": reason, **metrics}, f)
    print(f"invalid: {reason}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Score the model train.py exported (run by the harness).")
    parser.add_argument("--split", choices=("val", "test"), default="val", help="test: the hidden split, kept candidates only")
    split = parser.parse_args(argv).split
    artifacts = os.environ.get("AUTORESEARCH_ARTIFACTS")
    if not artifacts:
        fail("AUTORESEARCH_ARTIFACTS is not set: the harness runs this after train.py")
    t0 = time.time()
    program = load_model(artifacts)
    model = program.module()
    tensors = list(model.parameters()) + list(model.buffers())
    device = tensors[0].device if tensors else torch.device("cpu")
    tokenizer = Tokenizer.from_directory()
    torch.seed()  # an unpredictable random stream, should a draw slip past random_draws
    t1 = time.time()
    probe = probe_batches(tokenizer, split, device)
    if probe is None:
        fail(f"the {split} split holds less than one row of {MAX_SEQ_LEN + 1} tokens; run `autoresearch prepare` again")
    before = {name: tensor.detach().clone() for name, tensor in model_state(model).items()}
    try:
        leak, reason = causality_probe(model, *probe)
    except Exception as exc:
        fail(f"the exported model failed on the {split} batches ({type(exc).__name__}: {exc})")
    reason = random_draws(program) or state_changed(model, before, "during the causality probe") or reason
    t2 = time.time()
    if split == "val":
        with open(os.path.join(artifacts, "fingerprint.json"), "w") as f:
            json.dump(fingerprint(model), f)
    print("---")
    probed = {} if leak is None else {"causality_max_diff": leak}
    if reason:
        invalid(reason, probed)
        return
    try:
        bpb = evaluate_bpb(model, tokenizer, EVAL_BATCH_SIZE, device=device, split=split)
    except NonFiniteLogits as exc:
        invalid(exc.reason, probed)
        return
    except Exception as exc:
        fail(f"the exported model failed on the {split} batches ({type(exc).__name__}: {exc})")
    reason = state_changed(model, before, "during scoring")
    if reason:
        invalid(reason, probed)
        return
    metrics = {f"{split}_bpb": bpb, "causality_max_diff": leak, "load_seconds": t1 - t0, "probe_seconds": t2 - t1,
               "score_seconds": time.time() - t2}
    with open("metrics.json", "w") as f:  # in the evaluator's own fresh folder, where training never wrote
        json.dump(metrics, f)
    for key, value in metrics.items():
        print(f"{key}: {value:.6f}" if key.endswith("_bpb") else f"{key}: {value:.3g}")


if __name__ == "__main__":
    main()
