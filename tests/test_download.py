"""The real download path of the gpt template's prepare.py, against a real HTTP server on 127.0.0.1.

The server serves parquet files written with pyarrow at test time, at the Hugging Face URL layout
`/datasets/<repo>/resolve/main/<filename>`; prepare is pointed at it through its HF_ENDPOINT attribute.
Server-side faults (500s, truncated bodies, redirects, gzip) are scripted per path.
"""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import sys
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest


CLIMBMIX = "karpathy/climbmix-400b-shuffle"
TINYSTORIES = "karpathy/tinystories-gpt4-clean"
TINYSTORIES_FILE = "tinystories_gpt4_clean.parquet"
PREPARE_PY = Path(__file__).resolve().parents[1] / "src" / "autoresearch" / "templates" / "gpt" / "prepare.py"


def parquet_bytes(texts: list[str]) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.table({"text": texts}), sink)
    return sink.getvalue()


def resolve_path(repo: str, filename: str) -> str:
    return f"/datasets/{repo}/resolve/main/{filename}"


def shard_texts(index: int) -> list[str]:
    """Distinct, word-rich documents for one shard, so a small BPE has pairs to merge."""
    return [f"shard {index} document {j}: the quick brown fox jumps over the lazy dog {j * 7 + index}." for j in range(40)]


class FakeHub:
    """A tiny Hugging Face lookalike: files by URL path, scripted faults, a log of every request."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.fail_first: dict[str, int] = {}  # path -> how many requests answer 500 before it works
        self.truncate: dict[str, str] = {}  # path -> "short-body" (Content-Length > bytes sent) | "half-file"
        self.redirect = False  # answer resolve URLs with a 302 to /cdn/..., as the Hub does
        self.gzip = False  # send Content-Encoding: gzip when the client accepts it
        self.requests: list[str] = []
        self.lock = threading.Lock()
        self.url = ""

    def count(self, path: str) -> int:
        return Counter(self.requests)[path]

    def handler(hub):  # noqa: N805 - `hub` is the FakeHub, the handler's own self is `self`
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                path = self.path
                with hub.lock:
                    hub.requests.append(path)
                    failures_left = hub.fail_first.get(path, 0)
                    if failures_left:
                        hub.fail_first[path] = failures_left - 1
                if failures_left:
                    self.send_error(500, "scripted failure")
                    return
                if path.startswith("/cdn/"):
                    path = path[len("/cdn"):]
                elif hub.redirect and path in hub.files:
                    self.send_response(302)
                    self.send_header("Location", "/cdn" + path)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = hub.files.get(path)
                if body is None:
                    self.send_error(404, "no such file")
                    return
                mode = hub.truncate.get(path)
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                if mode == "short-body":  # promise the whole file, send half, hang up
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if mode == "half-file":  # a consistent response whose content is half a parquet file
                    body = body[: len(body) // 2]
                if hub.gzip and "gzip" in (self.headers.get("Accept-Encoding") or ""):
                    body = gzip.compress(body)
                    self.send_header("Content-Encoding", "gzip")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler


@pytest.fixture
def hub(monkeypatch):
    """A FakeHub served on 127.0.0.1 on a free port for the duration of one test."""
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    fake = FakeHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), fake.handler())
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def hf(prepare, hub, monkeypatch):
    """prepare pointed at the hub; returns the hub."""
    monkeypatch.setattr(prepare, "HF_ENDPOINT", hub.url)
    return hub


def serve_climbmix(hub, train_indices=(0, 1, 2, 3)) -> dict[int, bytes]:
    shards = {}
    for index in (*train_indices, 6541, 6542):
        shards[index] = parquet_bytes(shard_texts(index))
        hub.files[resolve_path(CLIMBMIX, f"shard_{index:05d}.parquet")] = shards[index]
    return shards


def shard_path(index: int) -> str:
    return resolve_path(CLIMBMIX, f"shard_{index:05d}.parquet")


def leftovers(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and (p.suffix in (".parquet", ".tmp")))


# ---------------------------------------------------------------------------
# climbmix-style shards
# ---------------------------------------------------------------------------

def test_climbmix_shards_land_in_splits_and_tokenizer_is_trained(prepare, hf, cache_dir):
    shards = serve_climbmix(hf)
    assert prepare.main(["--dataset", "climbmix", "--num-shards", "2", "--vocab-size", "300", "--backoff", "0"]) == 0

    out = cache_dir / "climbmix"
    assert sorted(p.name for p in (out / "train").iterdir()) == ["shard_00000.parquet", "shard_00001.parquet"]
    assert sorted(p.name for p in (out / "val").iterdir()) == ["shard_06542.parquet"]
    assert sorted(p.name for p in (out / "test").iterdir()) == ["shard_06541.parquet"]
    for split, index in (("train", 0), ("train", 1), ("val", 6542), ("test", 6541)):
        assert (out / split / f"shard_{index:05d}.parquet").read_bytes() == shards[index]  # byte-identical
    assert sorted(hf.requests) == sorted(shard_path(i) for i in (0, 1, 6541, 6542))
    assert not list(out.rglob("*.tmp"))

    tok_dir = out / "tokenizer-300"
    assert (tok_dir / "tokenizer.pkl").is_file() and (tok_dir / "token_bytes.npy").is_file()
    tok = prepare.Tokenizer.from_directory(tok_dir)
    assert tok.get_vocab_size() == 300
    text = shard_texts(0)[3]
    assert tok.decode(tok.encode(text)) == text
    # The rest of prepare reads the downloaded val shard as its val split.
    assert list(prepare.iter_texts("val", "climbmix")) == shard_texts(6542)


@pytest.mark.parametrize("num_shards", [1, 3])
def test_num_shards_flag_is_honoured(prepare, hf, cache_dir, num_shards):
    serve_climbmix(hf)
    prepare.main(["--dataset", "climbmix", "--num-shards", str(num_shards), "--vocab-size", "300", "--backoff", "0"])
    train = sorted(p.name for p in (cache_dir / "climbmix" / "train").glob("*.parquet"))
    assert train == [f"shard_{i:05d}.parquet" for i in range(num_shards)]
    assert sorted(hf.requests) == sorted(shard_path(i) for i in (*range(num_shards), 6541, 6542))


def test_already_downloaded_files_are_not_fetched_again(prepare, hf, cache_dir):
    serve_climbmix(hf)
    prepare.main(["--dataset", "climbmix", "--num-shards", "2", "--vocab-size", "300", "--backoff", "0"])
    assert len(hf.requests) == 4
    hf.requests.clear()
    prepare.main(["--dataset", "climbmix", "--num-shards", "3", "--vocab-size", "300", "--backoff", "0"])
    assert hf.requests == [shard_path(2)]  # only the new shard
    hf.requests.clear()
    prepare.main(["--dataset", "climbmix", "--num-shards", "3", "--vocab-size", "300", "--backoff", "0"])
    assert hf.requests == []


def test_server_errors_are_retried_until_success(prepare, hf, cache_dir):
    shards = serve_climbmix(hf)
    hf.fail_first[shard_path(0)] = 2
    hf.fail_first[shard_path(6542)] = 1
    prepare.main(["--dataset", "climbmix", "--num-shards", "1", "--vocab-size", "300", "--backoff", "0"])
    assert hf.count(shard_path(0)) == 3
    assert hf.count(shard_path(6542)) == 2
    assert (cache_dir / "climbmix" / "train" / "shard_00000.parquet").read_bytes() == shards[0]
    assert (cache_dir / "climbmix" / "val" / "shard_06542.parquet").read_bytes() == shards[6542]
    assert not list(cache_dir.rglob("*.tmp"))


def test_redirect_to_cdn_is_followed(prepare, hf, cache_dir):
    """The Hub answers resolve URLs with a redirect to its CDN."""
    shards = serve_climbmix(hf)
    hf.redirect = True
    prepare.main(["--dataset", "climbmix", "--num-shards", "1", "--vocab-size", "300", "--backoff", "0"])
    assert hf.count("/cdn" + shard_path(0)) == 1
    assert (cache_dir / "climbmix" / "train" / "shard_00000.parquet").read_bytes() == shards[0]


@pytest.mark.parametrize("mode", ["short-body", "half-file"])
def test_truncated_download_leaves_nothing_and_raises_data_error(prepare, hf, cache_dir, mode, capsys):
    serve_climbmix(hf)
    hf.truncate[shard_path(6542)] = mode  # the val shard never arrives whole
    with pytest.raises(prepare.DataError) as info:
        prepare.main(["--dataset", "climbmix", "--num-shards", "1", "--vocab-size", "300",
                      "--attempts", "3", "--backoff", "0"])
    assert isinstance(info.value, SystemExit)
    message = str(info.value)
    assert message.startswith("prepare: ")
    assert shard_path(6542) in message and "after 3 attempts" in message
    assert "run `autoresearch prepare` again" in message  # says what to do next
    assert hf.count(shard_path(6542)) == 3  # every attempt was made
    out = cache_dir / "climbmix"
    assert not (out / "val").exists() or not any((out / "val").iterdir())  # no .parquet, no .tmp
    assert leftovers(cache_dir) == [out / "train" / "shard_00000.parquet"]
    assert "attempt 3/3" in capsys.readouterr().out


def test_download_file_replaces_a_stale_tmp_and_validates(prepare, hub):
    body = parquet_bytes(["alpha", "beta"])
    hub.files["/f.parquet"] = body
    dest = Path(os.environ["AUTORESEARCH_CACHE"]) / "x" / "f.parquet"
    dest.parent.mkdir(parents=True)
    stale = dest.with_name("f.parquet.tmp")
    stale.write_bytes(b"garbage from a killed run")
    prepare.download_file(hub.url + "/f.parquet", dest, attempts=1, backoff=0)
    assert dest.read_bytes() == body
    assert not stale.exists()


def test_missing_file_fails_at_once_without_retries(prepare, hub):
    dest = Path(os.environ["AUTORESEARCH_CACHE"]) / "x" / "missing.parquet"
    with pytest.raises(prepare.DataError, match="answered 404"):
        prepare.download_file(hub.url + "/missing.parquet", dest, attempts=3, backoff=0)
    assert hub.count("/missing.parquet") == 1  # a 404 will not change on retry
    assert not list(dest.parent.iterdir())


def test_gzip_encoded_response_is_accepted(prepare, hub):
    body = parquet_bytes(["alpha", "beta"] * 50)
    hub.files["/g.parquet"] = body
    hub.gzip = True
    dest = Path(os.environ["AUTORESEARCH_CACHE"]) / "x" / "g.parquet"
    prepare.download_file(hub.url + "/g.parquet", dest, attempts=1, backoff=0)
    assert dest.read_bytes() == body


def test_unreachable_endpoint_exits_nonzero_with_one_line(tmp_path):
    """As a script, a failed download ends with exit status 1 and a one-line message, no traceback."""
    import socket

    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "AUTORESEARCH_CACHE": str(tmp_path / "cache"), "HF_ENDPOINT": f"http://127.0.0.1:{port}/",
           "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    proc = subprocess.run([sys.executable, str(PREPARE_PY), "--dataset", "climbmix",
                           "--num-shards", "1", "--attempts", "1", "--backoff", "0"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"prepare: could not download http://127.0.0.1:{port}{shard_path(0)} after 1 attempts; "
        "check the network (or HF_ENDPOINT) and run `autoresearch prepare` again"]


# ---------------------------------------------------------------------------
# tinystories: one file, split by row index
# ---------------------------------------------------------------------------

def test_tinystories_is_split_by_row_index(prepare, hf, cache_dir):
    n = 8300  # more than one 8192-row read batch, so the row counter must carry across batches
    stories = [f"Once upon a time story {i} had a cat and a dog." for i in range(n)]
    body = parquet_bytes(stories)
    hf.files[resolve_path(TINYSTORIES, TINYSTORIES_FILE)] = body
    prepare.main(["--dataset", "tinystories", "--vocab-size", "300", "--backoff", "0"])

    out = cache_dir / "tinystories"
    assert (out / "raw" / TINYSTORIES_FILE).read_bytes() == body
    got = {s: pq.read_table(out / s / "data.parquet").column("text").to_pylist() for s in ("train", "val", "test")}
    assert got["val"] == [stories[i] for i in range(n) if i % 100 == 0]
    assert got["test"] == [stories[i] for i in range(n) if i % 100 == 1]
    assert got["train"] == [stories[i] for i in range(n) if i % 100 > 1]
    assert prepare.Tokenizer.from_directory(out / "tokenizer-300").get_vocab_size() == 300
    assert hf.requests == [resolve_path(TINYSTORIES, TINYSTORIES_FILE)]

    hf.requests.clear()
    prepare.main(["--dataset", "tinystories", "--vocab-size", "300", "--backoff", "0"])  # a no-op
    assert hf.requests == []
