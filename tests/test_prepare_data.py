"""Data preparation and the tokenizer of the gpt template's prepare.py, on the embedded corpus (kjv)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

SPLITS = ("train", "val", "test")


@pytest.fixture
def kjv(prepare, kjv_cache, monkeypatch):
    """prepare, reading the session's prepared kjv cache (read-only use)."""
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(kjv_cache))
    return prepare


@pytest.fixture
def kjv_copy(prepare, kjv_cache, tmp_path, monkeypatch):
    """prepare, on a private copy of the prepared kjv cache that a test may damage."""
    root = tmp_path / "kjv-copy"
    shutil.copytree(kjv_cache, root)
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(root))
    return prepare


def read_split(prepare, split):
    return pq.read_table(prepare.dataset_dir("kjv") / split / "data.parquet").column("text").to_pylist()


def kjv_chapters(prepare) -> dict[str, list[str]]:
    chapters: dict[str, list[str]] = {}
    with open(prepare.kjv_jsonl_path(), encoding="utf-8") as f:
        for line in f:
            verse = json.loads(line)
            chapters.setdefault(f"{verse['book']} {verse['chapter']}", []).append(verse["text"])
    return chapters


# ---------------------------------------------------------------------------
# The embedded corpus
# ---------------------------------------------------------------------------

def test_kjv_writes_three_disjoint_splits_of_whole_chapters(kjv):
    chapters = kjv_chapters(kjv)
    assert len(chapters) == 1189
    docs = {s: read_split(kjv, s) for s in SPLITS}
    names = {s: [d.split("\n", 1)[0] for d in docs[s]] for s in SPLITS}
    for s in SPLITS:
        assert docs[s], f"{s} is empty"
        assert len(set(names[s])) == len(names[s])  # each chapter once
        for name, doc in zip(names[s], docs[s]):
            assert kjv.split_of(name) == s  # the pinned split
            assert doc == name + "\n" + "\n".join(chapters[name])  # the whole chapter, verses in order
    assert set(names["train"]) | set(names["val"]) | set(names["test"]) == set(chapters)
    assert not set(names["train"]) & set(names["val"])
    assert not set(names["train"]) & set(names["test"])
    assert not set(names["val"]) & set(names["test"])
    # No held-out chapter's text appears in train (chapters that happen to be identical are not a leak).
    train_texts = {d.split("\n", 1)[1] for d in docs["train"]}
    for s in ("val", "test"):
        for d in docs[s]:
            assert d.split("\n", 1)[1] not in train_texts
    # Pinned (sha256 of the chapter name), so the held-out sets, and hence the metric, never move. Roughly 90/5/5.
    assert [len(docs[s]) for s in SPLITS] == [1095, 52, 42]
    assert 0.85 < len(docs["train"]) / len(chapters) < 0.95
    assert 0.02 < len(docs["val"]) / len(chapters) < 0.08
    # Train order is shuffled (not the book order), held-out splits keep book order.
    assert names["train"][:3] != [n for n in chapters if n in set(names["train"])][:3]
    assert names["val"] == [n for n in chapters if kjv.split_of(n) == "val"]


def test_kjv_split_of_is_pinned(prepare):
    # sha256-based, so it never depends on PYTHONHASHSEED or the order of the source.
    assert [prepare.split_of(n) for n in ("Genesis 1", "Genesis 1")] == [prepare.split_of("Genesis 1")] * 2
    buckets = [prepare.split_of(f"doc {i}") for i in range(4000)]
    assert 0.03 < buckets.count("val") / 4000 < 0.07
    assert 0.03 < buckets.count("test") / 4000 < 0.07


def test_rerun_is_a_no_op(kjv_copy, capsys):
    root = kjv_copy.cache_root()
    before = {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in root.rglob("*") if p.is_file()}
    assert kjv_copy.main(["--dataset", "kjv", "--vocab-size", "1024"]) == 0
    after = {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in root.rglob("*") if p.is_file()}
    assert after == before
    out = capsys.readouterr().out
    assert "kjv already prepared" in out and "Tokenizer: already trained" in out


def test_fresh_prepare_from_scratch(prepare, cache_dir):
    assert prepare.main(["--dataset", "kjv", "--vocab-size", "300"]) == 0
    for s in SPLITS:
        assert (cache_dir / "kjv" / s / "data.parquet").is_file()
    assert (cache_dir / "kjv" / "tokenizer-300" / "tokenizer.pkl").is_file()
    assert not list(cache_dir.rglob("*.tmp"))


# ---------------------------------------------------------------------------
# Missing and broken data
# ---------------------------------------------------------------------------

def test_missing_data_names_the_command_to_run(prepare, cache_dir):
    with pytest.raises(prepare.DataError) as info:
        prepare.split_files("train", "kjv")
    assert isinstance(info.value, SystemExit)
    assert "autoresearch prepare" in str(info.value) and str(cache_dir / "kjv" / "train") in str(info.value)

    with pytest.raises(prepare.DataError, match="autoresearch prepare"):
        prepare.Tokenizer.from_directory(prepare.tokenizer_dir("kjv", 1024))
    with pytest.raises(prepare.DataError, match="autoresearch prepare"):
        prepare.get_token_bytes(directory=prepare.tokenizer_dir("kjv", 1024))
    with pytest.raises(prepare.DataError, match="autoresearch prepare"):
        prepare.train_tokenizer("kjv", 300)


def test_missing_split_at_load_time(kjv_copy):
    tok = kjv_copy.Tokenizer.from_directory(kjv_copy.tokenizer_dir("kjv", 1024))
    shutil.rmtree(kjv_copy.dataset_dir("kjv") / "val")
    loader = kjv_copy.make_dataloader(tok, 2, 16, "val", epochs=1, dataset="kjv")
    with pytest.raises(kjv_copy.DataError, match=r"no val data for dataset 'kjv'.*autoresearch prepare"):
        next(loader)


@pytest.mark.parametrize("damage", ["half-written", "empty", "not-parquet"])
def test_corrupt_parquet_names_the_file(kjv_copy, damage):
    path = kjv_copy.dataset_dir("kjv") / "val" / "data.parquet"
    data = path.read_bytes()
    path.write_bytes({"half-written": data[: len(data) // 2], "empty": b"", "not-parquet": b"PAR1 hello"}[damage])
    tok = kjv_copy.Tokenizer.from_directory(kjv_copy.tokenizer_dir("kjv", 1024))
    with pytest.raises(kjv_copy.DataError) as info:
        next(kjv_copy.make_dataloader(tok, 2, 16, "val", epochs=1, dataset="kjv"))
    message = str(info.value)
    assert str(path) in message and "not a readable parquet file" in message and "autoresearch prepare" in message


def test_corrupt_train_file_stops_tokenizer_training_with_data_error(kjv_copy):
    path = kjv_copy.dataset_dir("kjv") / "train" / "data.parquet"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(kjv_copy.DataError, match="not a readable parquet file"):
        kjv_copy.train_tokenizer("kjv", 300)  # the error travels out through rustbpe's iterator
    assert not kjv_copy.tokenizer_dir("kjv", 300).exists()


def test_leftover_tmp_file_is_ignored(kjv_copy):
    folder = kjv_copy.dataset_dir("kjv") / "val"
    (folder / "data.parquet.tmp").write_bytes(b"half a file from a killed run")
    assert kjv_copy.split_files("val", "kjv") == [folder / "data.parquet"]


def test_corrupt_data_page_names_the_file(prepare, cache_dir):
    path = prepare.dataset_dir("syn") / "val" / "data.parquet"
    prepare.write_parquet_atomic(path, [f"document number {i} " * 20 for i in range(200)])
    data = bytearray(path.read_bytes())
    for k in range(100, 164):  # inside the first data page; the footer stays readable
        data[k] ^= 0xFF
    path.write_bytes(bytes(data))
    prepare.open_parquet(path)  # opens fine
    with pytest.raises(prepare.DataError, match="data.parquet"):
        list(prepare.iter_texts("val", "syn"))


# ---------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------

def test_tokenizer_round_trips_and_has_the_vocab_asked(kjv):
    tok = kjv.Tokenizer.from_directory(kjv.tokenizer_dir("kjv", 1024))
    assert tok.get_vocab_size() == 1024
    bos = tok.get_bos_token_id()
    assert bos == 1023 and tok.enc.decode_single_token_bytes(bos) == b"<|bos|>"
    samples = ["In the beginning God created the heaven and the earth.", "  tabs\tand\nnewlines\r\n",
               "1234567 apples, 3.14", "你好, мир! café ñ 🙂", "<|bos|> is plain text here", ""]
    samples += read_split(kjv, "val")[:5]
    for text in samples:
        ids = tok.encode(text)
        assert bos not in ids  # special text is never turned into the special token
        assert tok.decode(ids) == text
    assert tok.encode(samples, prepend=bos) == [[bos] + tok.encode(t) for t in samples]
    assert tok.encode("abc", prepend=bos)[0] == bos
    # A trained BPE compresses its own domain: well under one token per character.
    val = "\n".join(read_split(kjv, "val")[:10])
    assert len(tok.encode(val)) < 0.4 * len(val)


def test_token_bytes_table(kjv):
    tok = kjv.Tokenizer.from_directory(kjv.tokenizer_dir("kjv", 1024))
    table = kjv.get_token_bytes(directory=kjv.tokenizer_dir("kjv", 1024))
    assert table.shape == (1024,) and table.dtype.is_floating_point is False
    bos = tok.get_bos_token_id()
    expected = [0 if i == bos else len(tok.enc.decode_single_token_bytes(i)) for i in range(1024)]
    assert table.tolist() == expected
    assert min(expected[:bos] + expected[bos + 1:]) >= 1
    assert np.load(kjv.tokenizer_dir("kjv", 1024) / "token_bytes.npy").dtype == np.int32
    # Bytes of a text = sum of its tokens' bytes, even where a token splits a UTF-8 character.
    text = "naïve 你好 " + read_split(kjv, "test")[0][:500]
    assert sum(table[i].item() for i in tok.encode(text)) == len(text.encode("utf-8"))


def test_vocab_size_asked_is_vocab_size_given(prepare, cache_dir):
    texts = [f"word{i} other{i % 7} thing{i % 13}." for i in range(300)]
    prepare.write_parquet_atomic(prepare.dataset_dir("syn") / "train" / "data.parquet", texts)
    prepare.train_tokenizer("syn", 300)
    tok = prepare.Tokenizer.from_directory(prepare.tokenizer_dir("syn", 300))
    assert tok.get_vocab_size() == 300
    for text in texts[:20]:
        assert tok.decode(tok.encode(text)) == text


def test_too_small_corpus_for_vocab_is_refused_or_consistent(prepare, cache_dir):
    prepare.write_parquet_atomic(prepare.dataset_dir("syn") / "train" / "data.parquet", ["abc abd", "hello world"] * 3)
    try:
        prepare.train_tokenizer("syn", 2000)
    except prepare.DataError:
        return  # refusing clearly is fine
    tok = prepare.Tokenizer.from_directory(prepare.tokenizer_dir("syn", 2000))
    assert tok.get_vocab_size() == 2000
