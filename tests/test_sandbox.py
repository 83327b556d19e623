"""The bubblewrap sandbox around training runs, the paths a task protects, and the held-out split's flag."""

import subprocess
from types import SimpleNamespace

import pytest

from autoresearch import UsageError
from autoresearch.sandbox import Bubblewrap, bubblewrap_works, changed_paths, fingerprint, make_sandbox, resolve_protected
from autoresearch.status import flag_test_disagreements

needs_bwrap = pytest.mark.skipif(not bubblewrap_works(), reason="needs bubblewrap (apt-get install bubblewrap)")


def sh(command: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(command, shell=True, cwd=cwd, capture_output=True, text=True)


@needs_bwrap
def test_the_run_sees_held_out_data_as_empty_and_the_machine_read_only(tmp_path):
    ws, state, data = tmp_path / "ws", tmp_path / "ws" / ".autoresearch", tmp_path / "data"
    (data / "val").mkdir(parents=True)
    (data / "val" / "v.txt").write_text("secret")
    (data / "train.txt").write_text("public\n")
    (data / "single.txt").write_text("hidden file")
    artifacts = state / "runs" / "1" / "artifacts"
    state.mkdir(parents=True)
    (state / "journal").write_text("truth")
    box = Bubblewrap(state)
    wrapped = box.wrap("ls val; cat train.txt; cat single.txt; echo x > val/new; echo x > train.txt; echo lie > "
                       f"{state}/journal; echo model > {artifacts}/m; echo ok > {ws}/out; echo t > $TMPDIR/t; echo done",
                       [("rw", ws), ("ro", state), ("rw", artifacts)], hidden=[data / "val", data / "single.txt"])
    done = sh(wrapped, data)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["public", "done"]  # val is empty, the hidden file reads as nothing
    assert done.stderr.count("Read-only file system") == 3, done.stderr  # val/new, train.txt, the journal
    assert (data / "val" / "v.txt").read_text() == "secret" and not (data / "val" / "new").exists()
    assert (state / "journal").read_text() == "truth"
    assert (artifacts / "m").read_text() == "model\n" and (ws / "out").read_text() == "ok\n"
    assert (box.tmp / "t").exists()


@needs_bwrap
def test_the_run_has_no_network_unless_allowed(tmp_path):
    probe = "python -c \"import socket; s = socket.socket(); s.settimeout(2); s.connect(('1.1.1.1', 53))\""
    denied = sh(Bubblewrap(tmp_path / "s").wrap(probe, [("rw", tmp_path / "ws")]), tmp_path)
    assert denied.returncode != 0 and "unreachable" in denied.stderr.lower(), denied.stderr


def test_a_sandbox_that_cannot_run_is_a_clear_error_or_a_warning(tmp_path, monkeypatch):
    monkeypatch.setattr("autoresearch.sandbox.bubblewrap_works", lambda: False)
    with pytest.raises(UsageError, match="sandbox.mode is 'bwrap' but bubblewrap cannot run here; it is Linux-only: apt-get install bubblewrap"):
        make_sandbox("bwrap", tmp_path)
    said = []
    assert make_sandbox("auto", tmp_path, echo=said.append) is None
    assert said and said[0].startswith("Sandbox: none (bubblewrap not available")
    assert make_sandbox("none", tmp_path, echo=said.append) is None and len(said) == 1


def test_protected_paths_come_from_globs_and_the_tasks_locked_command(tmp_path, monkeypatch):
    for name in ("a/val", "a/test", "b/val", "a/tokenizer-1024"):
        (tmp_path / name).mkdir(parents=True)
    monkeypatch.setenv("DATA_ROOT", str(tmp_path))
    script = tmp_path / "paths.py"
    script.write_text(f"print('hide {tmp_path}/a/test')\nprint('protect {tmp_path}/a/tokenizer-*')\nprint('noise line')\n"
                      f"print('hide {tmp_path}/does-not-exist')\n")
    paths = resolve_protected(tmp_path, ["$DATA_ROOT/*/val"], [], f"python {script}")
    assert paths.hidden == [tmp_path / "a" / "val", tmp_path / "b" / "val", tmp_path / "a" / "test"]
    assert paths.protected == [tmp_path / "a" / "tokenizer-1024"]
    with pytest.raises(UsageError, match="the sandbox paths command `python -c 'raise SystemExit\\(\"no cache\"\\)'` failed: no cache"):
        resolve_protected(tmp_path, [], [], "python -c 'raise SystemExit(\"no cache\")'")


def test_a_rewrite_or_swap_of_protected_data_changes_its_fingerprint(tmp_path):
    (tmp_path / "val").mkdir()
    target = tmp_path / "val" / "data.parquet"
    target.write_bytes(b"x" * 100)
    before = fingerprint([tmp_path / "val"])
    assert changed_paths(before, fingerprint([tmp_path / "val"])) == []
    swapped = tmp_path / "other"
    swapped.write_bytes(b"y" * 100)
    swapped.replace(target)  # same size, new file
    assert changed_paths(before, fingerprint([tmp_path / "val"])) == [str(target)]


def row(id, metric, test, status="keep"):
    return SimpleNamespace(id=id, metric=metric, test_metric=test, status=status)


def test_a_val_gain_the_test_split_does_not_share_is_flagged():
    rows = [row(1, 2.00, 2.02), row(2, 1.90, 1.92), row(3, 1.95, None, "discard"), row(4, 1.80, 1.91), row(5, 1.79, None)]
    flags = flag_test_disagreements(rows, maximize=False, sigma=0.01, k=2.0)
    assert list(flags) == [4]  # row 2's gain held on test; row 4 gained 0.1 on val and 0.01 on test
    assert flags[4].startswith("val gained 0.1 but the hidden test split +0.01")
    assert flag_test_disagreements(rows, maximize=False, sigma=0.05, k=2.0) == {}  # within noise


@needs_bwrap
def test_folders_named_writable_in_the_config_can_be_written(tmp_path, monkeypatch):
    (tmp_path / "hf-cache").mkdir()
    (tmp_path / "other").mkdir()
    monkeypatch.setenv("CACHE_ROOT", str(tmp_path))
    box = make_sandbox("bwrap", tmp_path / "state", writable=["$CACHE_ROOT/hf-*"])
    done = sh(box.wrap(f"echo a > {tmp_path}/hf-cache/f && echo b > {tmp_path}/other/f", [("rw", tmp_path / "ws")]), tmp_path)
    assert (tmp_path / "hf-cache" / "f").read_text() == "a\n"
    assert done.returncode != 0 and "Read-only file system" in done.stderr and not (tmp_path / "other" / "f").exists()
