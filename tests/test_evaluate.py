"""evaluate_bpb of the gpt template's prepare.py, checked against values computed by hand in the test.

The references iterate the same packing loader (make_dataloader, tested on its own in test_dataloader.py)
but compute losses with explicit loops in float64 and count bytes with tiktoken's decode_single_token_bytes,
not with the token_bytes table that evaluate_bpb reads.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

V = 1024  # the session kjv tokenizer's vocabulary
DATASET = "kjv"


@pytest.fixture
def kjv(prepare, kjv_cache, monkeypatch):
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(kjv_cache))
    tok = prepare.Tokenizer.from_directory(prepare.tokenizer_dir(DATASET, V))
    assert tok.get_vocab_size() == V
    return prepare, tok


def byte_lengths(tok) -> list[int]:
    bos = tok.get_bos_token_id()
    return [0 if i == bos else len(tok.enc.decode_single_token_bytes(i)) for i in range(tok.get_vocab_size())]


def batches(prepare, tok, B, T, max_tokens=None, split="val"):
    """The batches evaluate_bpb sees: the split once, in order, a batch taken while fewer than max_tokens were seen."""
    seen = 0
    for x, y, _ in prepare.make_dataloader(tok, B, T, split, epochs=1, dataset=DATASET):
        if max_tokens is not None and seen >= max_tokens:
            return
        yield x, y
        seen += y.numel()


class Uniform(nn.Module):
    def forward(self, x):
        return torch.zeros(*x.shape, V)


class Bigram(nn.Module):
    """logits[b, t] = table[x[b, t]]: a fixed random table, deterministic given the seed."""

    def __init__(self, seed=0, scale=3.0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.table = nn.Embedding(V, V)
        with torch.no_grad():
            self.table.weight.copy_(torch.randn(V, V, generator=g) * scale)

    def forward(self, x):
        return self.table(x)


def hand_bpb_bigram(model, prepare, tok, B, T, max_tokens):
    """Cross-entropy in nats by explicit loops over positions and a float64 log-sum-exp per row of the table."""
    weights = model.table.weight.detach().double().tolist()
    lse_cache: dict[int, float] = {}

    def logsumexp(row: list[float]) -> float:
        m = max(row)
        return m + math.log(math.fsum(math.exp(w - m) for w in row))

    nbytes_of = byte_lengths(tok)
    bos = tok.get_bos_token_id()
    nats, nbytes, positions = 0.0, 0, 0
    for x, y in batches(prepare, tok, B, T, max_tokens):
        for xrow, yrow in zip(x.tolist(), y.tolist()):
            for a, b in zip(xrow, yrow):
                positions += 1
                if b == bos:
                    continue
                if a not in lse_cache:
                    lse_cache[a] = logsumexp(weights[a])
                nats += lse_cache[a] - weights[a][b]  # -log softmax(table[a])[b]
                nbytes += nbytes_of[b]
    return nats / (math.log(2) * nbytes), positions


# ---------------------------------------------------------------------------
# (a) uniform logits
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("B,T", [(8, 128), (3, 50)])
def test_uniform_logits_give_log_v_per_token(kjv, B, T):
    prepare, tok = kjv
    bos = tok.get_bos_token_id()
    nbytes_of = torch.tensor(byte_lengths(tok))
    targets, nbytes, bos_targets = 0, 0, 0
    for _, y in batches(prepare, tok, B, T):
        targets += int((y != bos).sum())
        bos_targets += int((y == bos).sum())
        nbytes += int(nbytes_of[y].sum())
    assert bos_targets > 0 and targets > 10_000  # the whole val split, with document boundaries in it
    expected = targets * math.log(V) / (math.log(2) * nbytes)
    got = prepare.evaluate_bpb(Uniform(), tok, B, split="val", max_tokens=10**9, seq_len=T, dataset=DATASET)
    assert got == pytest.approx(expected, rel=1e-6)


# ---------------------------------------------------------------------------
# (b) a deterministic bigram model, by hand
# ---------------------------------------------------------------------------

def test_bigram_model_matches_hand_computation(kjv):
    prepare, tok = kjv
    B, T, max_tokens = 4, 64, 3 * 4 * 64
    model = Bigram(seed=1)
    expected, positions = hand_bpb_bigram(model, prepare, tok, B, T, max_tokens)
    assert positions == max_tokens
    got = prepare.evaluate_bpb(model, tok, B, split="val", max_tokens=max_tokens, seq_len=T, dataset=DATASET)
    assert got == pytest.approx(expected, rel=1e-5)
    # Not a degenerate case: a random bigram table is far worse than uniform.
    uniform = prepare.evaluate_bpb(Uniform(), tok, B, split="val", max_tokens=max_tokens, seq_len=T, dataset=DATASET)
    assert got > uniform * 1.2


def test_better_model_gets_lower_bpb(kjv):
    """A bigram table fit by counting the train split beats uniform on val (the metric points the right way)."""
    prepare, tok = kjv
    counts = torch.ones(V, V)
    for x, y, _ in prepare.make_dataloader(tok, 16, 128, "train", epochs=1, dataset=DATASET):
        counts.index_put_((x.reshape(-1), y.reshape(-1)), torch.ones(x.numel()), accumulate=True)
    model = Bigram()
    with torch.no_grad():
        model.table.weight.copy_((counts / counts.sum(1, keepdim=True)).log())
    fit = prepare.evaluate_bpb(model, tok, 8, split="val", max_tokens=10**9, seq_len=128, dataset=DATASET)
    uniform = prepare.evaluate_bpb(Uniform(), tok, 8, split="val", max_tokens=10**9, seq_len=128, dataset=DATASET)
    assert fit < 0.75 * uniform


# ---------------------------------------------------------------------------
# (c) special-token targets count in neither sum
# ---------------------------------------------------------------------------

class PenalizeBosTargets(nn.Module):
    """Uniform, except where the next input (= this target) is BOS: there it puts a very low logit on BOS.

    The model sees the whole row, so it can peek at the target; if BOS targets were counted, their
    loss (about 1e4 nats each) would swamp the result.
    """

    def __init__(self, bos, value=-1e4):
        super().__init__()
        self.bos, self.value = bos, value
        self.hits = 0

    def forward(self, x):
        logits = torch.zeros(*x.shape, V)
        next_is_bos = torch.zeros_like(x, dtype=torch.bool)
        next_is_bos[:, :-1] = x[:, 1:] == self.bos
        self.hits += int(next_is_bos.sum())
        logits[..., self.bos] = torch.where(next_is_bos, torch.tensor(self.value), torch.tensor(0.0))
        return logits


def test_special_token_targets_are_excluded(kjv):
    prepare, tok = kjv
    bos = tok.get_bos_token_id()
    B, T = 8, 128
    # The bytes sum: BOS has no bytes in the table evaluate_bpb reads.
    table = prepare.get_token_bytes(directory=prepare.tokenizer_dir(DATASET, V))
    assert table[bos].item() == 0
    # The nats sum: huge losses on BOS targets change nothing.
    model = PenalizeBosTargets(bos)
    got = prepare.evaluate_bpb(model, tok, B, split="val", max_tokens=10**9, seq_len=T, dataset=DATASET)
    assert model.hits > 50  # there were BOS targets, and they were penalized
    uniform = prepare.evaluate_bpb(Uniform(), tok, B, split="val", max_tokens=10**9, seq_len=T, dataset=DATASET)
    # Not bit-equal: the softmax at non-BOS positions is unchanged, but only up to float32 rounding.
    assert got == pytest.approx(uniform, rel=1e-6)
    # By hand: only non-BOS targets, each costing ln V nats.
    nbytes_of = byte_lengths(tok)
    targets = nbytes = 0
    for _, y in batches(prepare, tok, B, T):
        for t in y.reshape(-1).tolist():
            if t != bos:
                targets += 1
                nbytes += nbytes_of[t]
    assert got == pytest.approx(targets * math.log(V) / (math.log(2) * nbytes), rel=1e-6)


def test_infinite_loss_on_special_targets_is_excluded(kjv):
    """A loss too large for float32 sums on BOS targets changes nothing; an infinite logit is rejected outright.

    The loss comes from the most negative finite float32 logit (-3.4e38: about 3.4e38 nats on each BOS target,
    so one of them counted would overflow the sum). A -inf logit, which used to make that loss infinite, is now
    refused wherever it is, BOS targets included: non-finite logits anywhere in scoring make the model invalid.
    """
    prepare, tok = kjv
    B, T = 8, 128
    lowest = -torch.finfo(torch.float32).max
    got = prepare.evaluate_bpb(PenalizeBosTargets(tok.get_bos_token_id(), value=lowest), tok, B, split="val",
                               max_tokens=4 * B * T, seq_len=T, dataset=DATASET)
    uniform = prepare.evaluate_bpb(Uniform(), tok, B, split="val", max_tokens=4 * B * T, seq_len=T, dataset=DATASET)
    assert got == pytest.approx(uniform, rel=1e-6)
    with pytest.raises(prepare.NonFiniteLogits, match=r"not finite \(-inf\)"):
        prepare.evaluate_bpb(PenalizeBosTargets(tok.get_bos_token_id(), value=float("-inf")), tok, B, split="val",
                             max_tokens=4 * B * T, seq_len=T, dataset=DATASET)


# ---------------------------------------------------------------------------
# (d) max_tokens caps the evaluation
# ---------------------------------------------------------------------------

def test_max_tokens_caps_the_evaluation(kjv):
    prepare, tok = kjv
    B, T = 4, 32
    model = Bigram(seed=2)
    results = {}
    for n_batches in (1, 2, 5):
        cap = n_batches * B * T
        expected, positions = hand_bpb_bigram(model, prepare, tok, B, T, cap)
        assert positions == cap
        results[n_batches] = prepare.evaluate_bpb(model, tok, B, split="val", max_tokens=cap, seq_len=T, dataset=DATASET)
        assert results[n_batches] == pytest.approx(expected, rel=1e-5)
    assert len({round(r, 9) for r in results.values()}) == 3  # different caps, different token sets

    # A model that counts what it is shown.
    class Counting(Uniform):
        shown = 0

        def forward(self, x):
            Counting.shown += x.numel()
            return super().forward(x)

    prepare.evaluate_bpb(Counting(), tok, B, split="val", max_tokens=7 * B * T, seq_len=T, dataset=DATASET)
    assert Counting.shown == 7 * B * T


def test_result_does_not_depend_on_batch_size(kjv):
    """Rows are packed independently of the batch size, so any batch size dividing the cap sees the same rows."""
    prepare, tok = kjv
    T, rows = 32, 24
    model = Bigram(seed=3)
    values = [prepare.evaluate_bpb(model, tok, B, split="val", max_tokens=rows * T, seq_len=T, dataset=DATASET)
              for B in (1, 3, 8, 24)]
    assert max(values) == pytest.approx(min(values), rel=1e-6)
    # And with no cap, the whole split, whatever the batch size (the last batch may be short).
    whole = [prepare.evaluate_bpb(Uniform(), tok, B, split="val", max_tokens=10**9, seq_len=128, dataset=DATASET)
             for B in (5, 16)]
    assert whole[0] == pytest.approx(whole[1], rel=1e-6)


def test_max_tokens_is_an_upper_bound(kjv):
    prepare, tok = kjv
    T = 32

    class Counting(Uniform):
        shown = 0

        def forward(self, x):
            Counting.shown += x.numel()
            return super().forward(x)

    prepare.evaluate_bpb(Counting(), tok, 5, split="val", max_tokens=12 * T, seq_len=T, dataset=DATASET)
    assert Counting.shown <= 12 * T


def test_split_shorter_than_a_row_is_a_data_error(kjv):
    prepare, tok = kjv
    with pytest.raises(prepare.DataError, match="less than one row"):
        prepare.evaluate_bpb(Uniform(), tok, 2, split="val", max_tokens=10**9, seq_len=10**6, dataset=DATASET)


def test_missing_tokenizer_table_is_a_data_error(prepare, cache_dir, kjv_cache):
    tok = prepare.Tokenizer.from_directory(kjv_cache / DATASET / f"tokenizer-{V}")
    with pytest.raises(prepare.DataError, match="autoresearch prepare"):
        prepare.evaluate_bpb(Uniform(), tok, 2, split="val", max_tokens=64, seq_len=32, dataset=DATASET)


# ---------------------------------------------------------------------------
# (e) non-finite logits anywhere are rejected
# ---------------------------------------------------------------------------

class Poisoned(Uniform):
    """Uniform, except that on its `on`-th call one logit (row 0, last position, token 7) is `value`."""

    def __init__(self, value, on=1):
        super().__init__()
        self.value, self.on, self.calls = value, on, 0

    def forward(self, x):
        self.calls += 1
        logits = super().forward(x)
        if self.calls == self.on:
            logits[0, -1, 7] = self.value
        return logits


@pytest.mark.parametrize("value,kind", [(float("nan"), "nan"), (float("inf"), "inf"), (float("-inf"), "-inf")])
def test_non_finite_logits_are_rejected(kjv, value, kind):
    prepare, tok = kjv
    with pytest.raises(prepare.NonFiniteLogits) as caught:
        prepare.evaluate_bpb(Poisoned(value), tok, 4, split="val", max_tokens=3 * 4 * 32, seq_len=32, dataset=DATASET)
    assert caught.value.reason == f"the model's logits are not finite ({kind}) on evaluation rows (val batch 1)"
    assert isinstance(caught.value, prepare.DataError)  # train.py's own evaluate_bpb call exits cleanly on it


def test_non_finite_logits_on_a_later_batch_name_it(kjv):
    prepare, tok = kjv
    model = Poisoned(float("nan"), on=3)
    with pytest.raises(prepare.NonFiniteLogits, match=r"not finite \(nan\) on evaluation rows \(val batch 3\)"):
        prepare.evaluate_bpb(model, tok, 4, split="val", max_tokens=5 * 4 * 32, seq_len=32, dataset=DATASET)
    assert model.calls == 3  # it stopped there


def test_logits_that_overflow_float32_are_rejected(kjv):
    """Scoring computes in float32: a float64 logit beyond its range is infinite there."""
    prepare, tok = kjv

    class Huge(Uniform):
        def forward(self, x):
            logits = super().forward(x).double()
            logits[:, :, 3] = 1e300
            return logits

    with pytest.raises(prepare.NonFiniteLogits, match=r"not finite \(inf\)"):
        prepare.evaluate_bpb(Huge(), tok, 4, split="val", max_tokens=4 * 32, seq_len=32, dataset=DATASET)
