"""The packing dataloader of the gpt template's prepare.py: BOS-aligned rows, best fit, no padding, nothing lost.

Most checks use documents whose tokens are unique integers (a document "7 8 9" is the tokens 7, 8, 9 and the
tokenizer stand-in only parses them), so every emitted token names its document and position and the stream
can be reconstructed exactly. One test does the same with a BPE tokenizer trained on a synthetic corpus.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch

BOS = 0


class IdTokenizer:
    """Tokenizer stand-in with the interface make_dataloader uses: a text is space-separated token ids."""

    def get_bos_token_id(self) -> int:
        return BOS

    def encode(self, text, prepend=None, num_threads=4):
        if isinstance(text, str):
            ids = [int(t) for t in text.split()]
            return [prepend] + ids if prepend is not None else ids
        return [self.encode(t, prepend) for t in text]


def write_id_docs(prepare, dataset: str, lengths: list[int], split: str = "train", files: int = 1) -> list[list[int]]:
    """Documents of the given lengths made of globally unique token ids (>= 1); written as parquet splits."""
    docs, next_id = [], 1
    for n in lengths:
        docs.append(list(range(next_id, next_id + n)))
        next_id += n
    per_file = -(-len(docs) // files)
    for f in range(files):
        part = docs[f * per_file:(f + 1) * per_file]
        prepare.write_parquet_atomic(prepare.dataset_dir(dataset) / split / f"part_{f:02d}.parquet",
                                     [" ".join(map(str, d)) for d in part])
    return docs


def collect(loader):
    """All batches of a finite loader, checked for shape and shift; returns (rows of T+1 tokens, batch sizes, epochs)."""
    rows, sizes, epochs = [], [], []
    for x, y, epoch in loader:
        assert x.shape == y.shape and x.dim() == 2
        assert x.dtype == torch.long and y.dtype == torch.long
        assert torch.equal(x[:, 1:], y[:, :-1])  # targets are the inputs shifted by one
        sizes.append(x.shape[0])
        epochs.append(epoch)
        rows.extend(torch.cat([x, y[:, -1:]], dim=1).tolist())
    return rows, sizes, epochs


def segments(row):
    """Split a row at its BOS tokens: the pieces (without their BOS) in order."""
    assert row[0] == BOS, "a row must start with BOS"
    pieces = []
    for t in row:
        if t == BOS:
            pieces.append([])
        else:
            pieces[-1].append(t)
    return pieces


def check_exact_packing(rows, docs, T):
    """Every row holds real tokens only, each piece is a contiguous run of one document, each document's
    pieces come in order, every token is emitted at most once, and what is missing fits in one dropped row."""
    where = {t: (d, p) for d, doc in enumerate(docs) for p, t in enumerate(doc)}
    emitted = [0] * len(docs)  # how many leading tokens of each document have been emitted
    lone_bos = 0  # BOS-only pieces before the end of a row: only an empty document can make one
    for row in rows:
        assert len(row) == T + 1
        pieces = segments(row)
        for k, piece in enumerate(pieces):
            if not piece:
                lone_bos += k < len(pieces) - 1  # at the very end it may be a cut with room for one token
                continue
            assert all(t in where for t in piece), "a position holds something that is not a document token"
            d, p = where[piece[0]]
            assert p == emitted[d], f"document {d}: piece starts at {p}, expected {emitted[d]} (order or duplicate)"
            assert piece == docs[d][p:p + len(piece)], "a piece is not a contiguous run of one document"
            emitted[d] += len(piece)
    assert lone_bos <= sum(1 for doc in docs if not doc), "BOS used as padding"
    missing = [(d, len(doc) - emitted[d]) for d, doc in enumerate(docs) if emitted[d] < len(doc)]
    # The dropped partial row held the remaining documents whole, each behind a BOS, in fewer than T+1 tokens.
    assert sum(n + 1 for _, n in missing) <= T
    return emitted, missing


@pytest.fixture
def ids(prepare):
    return prepare, IdTokenizer()


# ---------------------------------------------------------------------------
# Exact reconstruction
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("buffer_size", [1, 3, 1000])
@pytest.mark.parametrize("B,T", [(4, 16), (3, 7), (1, 50)])
def test_every_token_once_no_padding(ids, B, T, buffer_size):
    prepare, tok = ids
    rng = random.Random(B * 1000 + T * 10 + buffer_size)
    lengths = [rng.choice([0, 1, 2, rng.randint(1, T), rng.randint(T, 4 * T), rng.randint(5 * T, 9 * T)]) for _ in range(300)]
    docs = write_id_docs(prepare, "ids", lengths, files=3)
    rows, sizes, epochs = collect(prepare.make_dataloader(tok, B, T, "train", epochs=1, buffer_size=buffer_size, dataset="ids"))
    assert set(epochs) == {1}
    assert all(s == B for s in sizes[:-1]) and 1 <= sizes[-1] <= B
    emitted, missing = check_exact_packing(rows, docs, T)
    total = sum(lengths)
    assert total - sum(emitted) == sum(n for _, n in missing) < T  # all but (at most) one dropped row's worth


def test_rows_do_not_depend_on_batch_size_and_last_batch_is_short(ids):
    prepare, tok = ids
    rng = random.Random(5)
    write_id_docs(prepare, "ids", [rng.randint(0, 40) for _ in range(200)])
    T = 12
    reference, sizes, _ = collect(prepare.make_dataloader(tok, 1, T, "train", epochs=1, dataset="ids"))
    assert set(sizes) == {1}
    n = len(reference)
    B = next(b for b in range(2, n) if n % b)  # a batch size that does not divide the row count
    rows, sizes, _ = collect(prepare.make_dataloader(tok, B, T, "train", epochs=1, dataset="ids"))
    assert rows == reference
    assert sizes == [B] * (n // B) + [n % B]


def test_best_fit_fills_with_longest_document_that_fits(ids):
    prepare, tok = ids
    docs = write_id_docs(prepare, "ids", [5, 2, 3])  # with BOS: 6, 3, 4 tokens
    batches = list(prepare.make_dataloader(tok, 2, 9, "train", epochs=1, dataset="ids"))  # rows of 10
    assert len(batches) == 1
    x, y, _ = batches[0]
    row = torch.cat([x, y[:, -1:]], dim=1).tolist()
    # 6 first (the longest that fits 10), then 4 (the longest that fits the 4 left); the 3 is left for a
    # second row that never fills, and is dropped.
    assert row == [[BOS, *docs[0], BOS, *docs[2]]]


def test_long_document_is_cut_and_continued_behind_bos(ids):
    prepare, tok = ids
    docs = write_id_docs(prepare, "ids", [24])  # 25 tokens with BOS, rows of 10
    batches = list(prepare.make_dataloader(tok, 4, 9, "train", epochs=1, dataset="ids"))
    assert len(batches) == 1
    x, y, _ = batches[0]
    rows = torch.cat([x, y[:, -1:]], dim=1).tolist()
    assert rows == [[BOS, *docs[0][0:9]], [BOS, *docs[0][9:18]]]  # the last 6 tokens (+BOS) never fill a row


def test_oldest_document_is_cut_when_nothing_fits(ids):
    prepare, tok = ids
    docs = write_id_docs(prepare, "ids", [12, 15, 13])  # all longer than a row of 10
    rows, _, _ = collect(prepare.make_dataloader(tok, 3, 9, "train", epochs=1, dataset="ids"))
    # Row 1: nothing fits, so doc 0 (oldest) is cut; its rest, BOS + 3 tokens, stays oldest. Row 2: that
    # rest (4 tokens) is the longest that fits; in the 6 left nothing fits, so the oldest left, doc 1, is cut.
    assert rows[0] == [BOS, *docs[0][:9]]
    assert rows[1] == [BOS, *docs[0][9:], BOS, *docs[1][:5]]
    assert rows[2][:1] == [BOS]
    check_exact_packing(rows, docs, 9)


def test_empty_split_gives_no_batch_and_short_split_gives_none(ids):
    prepare, tok = ids
    write_id_docs(prepare, "ids", [3, 2])  # 7 tokens with BOS: less than one row of 10
    assert list(prepare.make_dataloader(tok, 2, 9, "train", epochs=1, dataset="ids")) == []
    write_id_docs(prepare, "none", [])
    assert list(prepare.make_dataloader(tok, 2, 9, "train", epochs=1, dataset="none")) == []


def test_epochs_loop_over_the_split(ids):
    prepare, tok = ids
    rng = random.Random(9)
    docs = write_id_docs(prepare, "ids", [rng.randint(1, 30) for _ in range(100)])
    T = 15
    one, _, _ = collect(prepare.make_dataloader(tok, 4, T, "train", epochs=1, dataset="ids"))
    two, _, epochs = collect(prepare.make_dataloader(tok, 4, T, "train", epochs=2, dataset="ids"))
    assert set(epochs) == {1, 2}  # each batch reports the epoch of its last document; best fit mixes them
    counts = Counter(t for row in two for t in row if t != BOS)
    assert max(counts.values()) == 2
    assert 2 * len(one) - 1 <= len(two) <= 2 * len(one) + 1
    # Forever: keeps yielding full batches past the end of the split. The 1000-document buffer holds
    # about ten passes over this 100-document split, so the epochs of the documents placed interleave.
    forever = prepare.make_dataloader(tok, 4, T, "train", epochs=None, dataset="ids")
    seen = []
    for _ in range(3 * len(one) // 4 + 3):
        x, _, epoch = next(forever)
        assert x.shape == (4, T)
        seen.append(epoch)
    assert min(seen) >= 1 and max(seen) >= 3
    assert sum(len(d) for d in docs) > 0


def test_epoch_reported_is_that_of_the_rows(ids):
    prepare, tok = ids
    write_id_docs(prepare, "ids", [20] * 100)
    _, _, epoch = next(prepare.make_dataloader(tok, 2, 15, "train", epochs=None, dataset="ids"))
    assert epoch == 1


def test_invalid_split_is_refused(ids):
    prepare, tok = ids
    with pytest.raises(AssertionError):  # checked when the loader is made, before any batch
        prepare.make_dataloader(tok, 2, 8, "validation", dataset="ids")


# ---------------------------------------------------------------------------
# With a real BPE tokenizer
# ---------------------------------------------------------------------------

def synthetic_corpus(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "river", "stone", "light", "north", "quiet", "ember"]
    docs = []
    for i in range(n):
        body = " ".join(rng.choice(words) + str(rng.randint(0, 99)) for _ in range(rng.choice([1, 3, 10, 40, 120])))
        docs.append(f"Document {i}. {body}.")
    return docs


@pytest.fixture
def synth(prepare):
    corpus = {s: synthetic_corpus(n, seed) for s, n, seed in (("train", 300, 1), ("val", 60, 2), ("test", 60, 3))}
    for split, texts in corpus.items():
        prepare.write_parquet_atomic(prepare.dataset_dir("synth") / split / "data.parquet", texts)
    prepare.train_tokenizer("synth", 300)
    tok = prepare.Tokenizer.from_directory(prepare.tokenizer_dir("synth", 300))
    return prepare, tok, corpus


def is_sublist(piece, seq):
    n = len(piece)
    return any(seq[i:i + n] == piece for i in range(len(seq) - n + 1))


def test_packing_with_trained_tokenizer(synth):
    prepare, tok, corpus = synth
    assert tok.get_vocab_size() == 300
    bos = tok.get_bos_token_id()
    B, T = 4, 32
    rows, sizes, _ = collect(prepare.make_dataloader(tok, B, T, "val", epochs=1, buffer_size=7, dataset="synth"))
    assert rows and all(s == B for s in sizes[:-1])
    encoded = [tok.encode(text) for text in corpus["val"]]
    assert all(bos not in e for e in encoded)
    emitted = Counter()
    for row in rows:
        assert len(row) == T + 1 and row[0] == bos
        pieces, current = [], None
        for t in row:
            if t == bos:
                current = []
                pieces.append(current)
            else:
                current.append(t)
        for piece in pieces:
            assert any(is_sublist(piece, e) for e in encoded), "a piece of a row is not part of any document"
            emitted.update(piece)
    wanted = Counter(t for e in encoded for t in e)
    assert not emitted - wanted  # nothing emitted that is not in the documents, nothing twice
    assert sum((wanted - emitted).values()) < T  # all but the tokens of one dropped partial row


def test_kjv_rows_start_with_bos(prepare, kjv_cache, monkeypatch):
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(kjv_cache))
    tok = prepare.Tokenizer.from_directory(prepare.tokenizer_dir("kjv", 1024))
    loader = prepare.make_dataloader(tok, 8, 64, "train", dataset="kjv")
    for _ in range(5):
        x, y, epoch = next(loader)
        assert x.shape == (8, 64) and y.shape == (8, 64) and epoch == 1
        assert (x[:, 0] == tok.get_bos_token_id()).all()
        assert torch.equal(x[:, 1:], y[:, :-1])
        assert x.min() >= 0 and x.max() < tok.get_vocab_size()
