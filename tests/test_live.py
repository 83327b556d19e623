"""The live view of `autoresearch run`: real rich rendering, a real pseudo-terminal, real sessions in subprocesses."""

import dataclasses
import fcntl
import io
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import textwrap
import threading
import time
from pathlib import Path

from rich.console import Console

from autoresearch.earlystop import parse_progress, parse_throughput
from autoresearch.ledger import Row
from autoresearch.live import LiveView
from autoresearch.session import run_session
from tasks import journal_rows, make_task
from test_loop import ScriptedAgent, edit

SRC = str(Path(__file__).resolve().parents[1] / "src")
ANSI = re.compile(r"\x1b(?:\[[0-9;?]*[ -/]*[@-~]|[@-Z\\-_])")
SPINNER = set("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏")  # rich's "dots" frames

# A task whose train.py prints step / loss / tok/s lines over its budget (flushed, as a real trainer's would be).
STEPPING = textwrap.dedent('''\
    """Least squares by gradient descent, printing progress lines over the budget: the score is minus the final MSE."""
    import os
    import time

    import numpy as np

    LR = 0.1  # step size
    STEPS = 40

    budget = float(os.environ.get("AUTORESEARCH_TIME_BUDGET", "1"))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3))
    y = x @ np.array([1.0, -2.0, 0.5])
    w = np.zeros(3)
    t0 = time.time()
    for step in range(STEPS):
        w -= LR * 2 * x.T @ (x @ w - y) / len(x)
        if step % max(1, STEPS // 8) == 0:
            print(f"step {step:4d} | loss {float(np.mean((x @ w - y) ** 2)):.4f} | {12345 + step:,} tok/s", flush=True)
            time.sleep(max(0.0, min(budget / 8, budget - (time.time() - t0))))
    print("---")
    print(f"score: {-float(np.mean((x @ w - y) ** 2)):.6f}")
''')
ONE_SEED = "\n[decide]\nseeds = 1\nbaseline_seeds = 1\n"
TWO_BASELINE_SEEDS = "\n[decide]\nseeds = 1\nbaseline_seeds = 2\n"  # the baseline gives a σ


def child_env() -> dict:
    """The environment of an `autoresearch` subprocess: this tree's package, and nothing that forces rich's hand."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("FORCE_COLOR", "NO_COLOR", "COLUMNS", "LINES", "TTY_COMPATIBLE", "TTY_INTERACTIVE")}
    env["PYTHONPATH"] = SRC + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["TERM"] = "xterm-256color"
    return env


def run_piped(args, cwd, timeout=120) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, "-m", "autoresearch", *args], cwd=cwd, env=child_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=timeout)
    return proc.returncode, proc.stdout.decode("utf-8", "replace")


def run_on_pty(args, cwd, timeout=120, interrupt_at: str | None = None) -> tuple[int, str]:
    """`autoresearch ARGS` with stdin, stdout and stderr on the slave of a real pseudo-terminal (120 x 40); the
    master side is read until the child and everything it started have let go of the terminal. With
    `interrupt_at`, Ctrl-C (SIGINT to the terminal's process group) once the output shows that text."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    try:
        proc = subprocess.Popen([sys.executable, "-m", "autoresearch", *args], cwd=cwd, env=child_env(), stdin=slave,
                                stdout=slave, stderr=slave, start_new_session=True)
    finally:
        os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 1 << 16)
                except OSError:  # EIO: no process holds the slave any more
                    break
                if not data:
                    break
                out += data
                if interrupt_at and interrupt_at in ANSI.sub("", out.decode("utf-8", "replace")):
                    os.killpg(proc.pid, signal.SIGINT)
                    interrupt_at = None
            elif proc.poll() is not None:
                break
        else:
            proc.kill()
        code = proc.wait(30)
    finally:
        os.close(master)
    return code, out.decode("utf-8", "replace").replace("\r\n", "\n")


def loop_lines(text: str) -> list[str]:
    """The lines the loop said, up to the status table that `run` prints at its end."""
    lines = text.splitlines()
    end = next(i for i, line in enumerate(lines) if ANSI.sub("", line).strip().startswith("autoresearch/"))
    return lines[:end]


def test_plain_lines_when_stdout_is_piped_and_under_quiet_on_a_terminal(tmp_path):
    """Not on a terminal, `run` prints the plain lines it always did; `--quiet` prints exactly those on a pty too."""
    piped_ws = make_task(tmp_path / "piped", STEPPING, extra_config=ONE_SEED)
    quiet_ws = make_task(tmp_path / "quiet", STEPPING, extra_config=ONE_SEED)
    args = ["run", "--tag", "t", "--agent", "tune", "--max-experiments", "1"]
    code, piped = run_piped(args, piped_ws)
    assert code == 0, piped
    assert "\x1b" not in piped and not SPINNER & set(piped), piped
    lines = loop_lines(piped)
    assert lines[0].startswith("Branch autoresearch/t | agent tune |") and "#1 baseline: 1+ run(s) of 1s" in lines
    assert re.fullmatch(r"  keep +-?\d+\.\d{6}  baseline.*", lines[lines.index("#1 baseline: 1+ run(s) of 1s") + 1])
    assert sum(bool(re.match(r"#\d+ .*: 1\+ run\(s\) of 1s$", line)) for line in lines) == 2
    assert not any("step" in line and "loss" in line for line in lines)  # the run's own log stays in its file
    assert "Best score:" in piped

    code, quiet = run_on_pty(args + ["--quiet"], quiet_ws)
    assert code == 0, quiet
    said = loop_lines(quiet)
    assert said == lines  # the same lines, byte for byte: no live area, no escape codes, no spinner
    assert "\x1b[?25l" not in quiet and "\x1b[2K" not in quiet  # the cursor never hidden, no line ever erased


def test_the_live_view_on_a_pseudo_terminal(tmp_path):
    """On a terminal, `run` draws the live area: the experiment's #id, a bar, the step and loss read from its log,
    the best so far and σ; the loop's lines are all printed above it, and the cursor is shown again at the end."""
    root = make_task(tmp_path / "ws", STEPPING, extra_config=TWO_BASELINE_SEEDS)
    code, out = run_on_pty(["run", "--tag", "t", "--agent", "tune", "--max-experiments", "2"], root)
    assert code == 0, out
    text = ANSI.sub("", out).replace("\r", "\n")
    frames = re.findall(r"^#(\d+) +(\S.*?) +([━╸╺]+) +(\d+)s/1s  (run \d+.*|starting|evaluating)$", text, re.M)
    assert {f[0] for f in frames} >= {"1", "2", "3"}, text[-3000:]
    assert any(f[1] == "baseline" for f in frames)
    progress = [re.search(r"step (\d+)  loss (\d+\.\d{4})  ([\d,]+) tok/s", f[4]) for f in frames]
    seen = {(int(m[1]), m[2], m[3]) for m in progress if m}
    assert seen and all(12345 + step == int(rate.replace(",", "")) for step, _, rate in seen)  # as the log printed it
    assert any(f[4].startswith("run 2") for f in frames if f[0] == "1")  # the baseline's second seed
    assert re.search(r"^best score -?\d+\.\d{6} \(#1\)  ·  σ \d+\.\d{6}  ·  1 recorded, 1 kept$", text, re.M)
    assert re.search(r"^  keep +-?\d+\.\d{6}  #1 baseline$", text, re.M)
    # every line the loop says is there, whole, outside the live area
    for line in ("#1 baseline: 2+ run(s) of 1s", "Sandbox: "):
        assert any(l.startswith(line) for l in text.splitlines()), line
    assert len(re.findall(r"^  [a-z]+ +(?:-?\d+\.\d{6}|-)  (?!#)", text, re.M)) == 3
    # the live area is gone and the cursor back before the status table is printed
    assert out.count("\x1b[?25l") == 1 and out.rfind("\x1b[?25h") > out.rfind("\x1b[?25l")
    assert out.rfind("\x1b[?25h") < out.index("Best score")


def test_ctrl_c_under_the_live_view_records_and_restores_the_terminal(tmp_path):
    root = make_task(tmp_path / "ws", STEPPING.replace("budget = float(", "budget = 30 * float("), extra_config=ONE_SEED)
    code, out = run_on_pty(["run", "--tag", "t", "--agent", "tune", "--max-experiments", "2", "--budget", "1"], root,
                           interrupt_at="step 5  loss")  # the baseline trains (30 s); the view shows its log
    assert code == 130, out
    assert "Interrupted: recording the experiment(s) under way and cleaning up." in out
    assert "autoresearch: interrupted: recorded, the branch is at the best" in out
    assert out.count("\x1b[?25l") == 1 and out.rfind("\x1b[?25h") > out.rfind("\x1b[?25l")
    assert journal_rows(root)[0]["status"] == "crash"  # the baseline cut off, recorded as such


def row(row_id: int, status: str, metric: float | None, description: str, values=()) -> Row:
    """A finished journal row as experiment_recorded receives it."""
    base = {f.name: None for f in dataclasses.fields(Row) if f.default is dataclasses.MISSING}
    base.update(id=row_id, branch="autoresearch/t", parent_commit="0" * 40, commit_sha="1" * 40, description=description,
                agent="scripted", diff="", state="done", status=status, reason="", metric=metric, summary_json="{}",
                log_tail="", started_at=0.0, attempt=0, input_tokens=0, output_tokens=0, llm_calls=0, cost_usd=0.0,
                values_json=json.dumps(list(values) or ([metric] if metric is not None else [])), seeds_json="[]")
    return Row(**base)


def shown(view: LiveView, width: int = 120) -> list[str]:
    """The live area as a 120-column terminal shows it, as plain text lines."""
    console = Console(file=io.StringIO(), force_terminal=True, width=width, record=True)
    console.print(view.render())
    return console.export_text().splitlines()


def test_rendered_live_area_one_line_per_worker_and_the_spinner_while_proposing(tmp_path):
    logs = [tmp_path / "run-a.log", tmp_path / "run-b.log"]
    logs[0].write_text("device cpu\nstep 10 | loss 3.2104 | 24,843 tok/s\nstep 20 | loss 3.1000 | 25,000 tok/s\n")
    logs[1].write_text("step 7 | loss 4.5000\nstep 8 | loss 4.4")  # a partial last line waits for its end
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    view = LiveView(console, maximize=True, metric="score")
    stdout = sys.stdout
    try:
        view.experiment_recorded(row(1, "keep", 0.5, "baseline", [0.5, 0.52, 0.48]))
        view.experiment_started(2, "LR 0.1→0.3 and a description far too long to fit on the line of its worker", 60, 0, "cpu 0")
        view.experiment_started(3, "STEPS 40→80", 60, 1, "cpu 1")
        view.process_started(2, "train", logs[0])
        worker = threading.Thread(target=view.process_started, args=(3, "train", logs[1]))  # as a worker thread does
        worker.start()
        worker.join(10)
        view.proposing(True, 0.0123)
        time.sleep(0.3)  # the refresh thread draws meanwhile; rendering below must not disturb it
        lines = shown(view)
        assert len(lines) == 5 and all(len(line) <= 120 for line in lines)
        assert lines[0][0] in SPINNER and "the agent is thinking · $0.0123 spent" in lines[0]
        workers = [line for line in lines if line.startswith("#")]
        assert len(workers) == 2 and workers[0].startswith("#2 ") and workers[1].startswith("#3 ")
        assert re.search(r"  LR 0.1→0.3 and a de\w*… ", workers[0]) and "━" in workers[0]
        assert workers[0].endswith("run 1  step 20  loss 3.1000  25,000 tok/s")
        assert workers[1].endswith("run 1  step 7  loss 4.5000")
        assert re.search(r" +0s/60s ", workers[1])
        assert lines[3] == "best score 0.500000 (#1)  ·  σ 0.020000  ·  1 recorded, 1 kept"
        assert lines[4] == "  keep       0.500000  #1 baseline"

        with open(logs[1], "a") as f:
            f.write("00 | 2,000 tok/s\n")  # the partial line ends: step 8, loss 4.400
        assert [line for line in shown(view) if line.startswith("#3")][0].endswith("run 1  step 8  loss 4.4000  2,000 tok/s")
        view.proposing(False, 0.02)
        view.process_started(2, "evaluate", None)
        view.experiment_recorded(row(3, "discard", 0.4, "STEPS 40→80"))
        lines = shown(view)
        assert not SPINNER & set("".join(lines)) and "thinking" not in "".join(lines)
        workers = [line for line in lines if line.startswith("#")]
        assert len(workers) == 1 and workers[0].endswith("evaluating  step 20  loss 3.1000  25,000 tok/s")
        assert lines[-2:] == ["  keep       0.500000  #1 baseline", "  discard    0.400000  #3 STEPS 40→80"]
        assert "2 recorded, 1 kept" in lines[1]
        assert len(shown(view, width=60)[0]) <= 60  # a narrow terminal crops the line; #id and the bar come first
        assert shown(view, width=60)[0].startswith("#2 ")
    finally:
        view.close()
    out = console.file.getvalue()
    assert out.count("\x1b[?25l") == 1 and "\x1b[?25h" in out[out.index("\x1b[?25l"):]  # the cursor shown again
    assert sys.stdout is stdout  # rich's redirection of stdout is undone


def test_lines_written_are_printed_whole_above_the_live_area_and_close_is_idempotent():
    console = Console(file=io.StringIO(), force_terminal=True, width=40)
    view = LiveView(console, maximize=False)
    view.write("before any event: printed plain, [bold]no markup[/] 3.14")
    view.experiment_started(1, "baseline", 5, 0, "")
    for i in range(20):
        view.write(f"#{i} a line far longer than the forty columns of this terminal, never cut or wrapped by rich")
    view.close()
    view.close()
    view.proposing(True, 0.0)  # an event after close starts nothing again
    out = ANSI.sub("", console.file.getvalue())
    assert "before any event: printed plain, [bold]no markup[/] 3.14\n" in out
    for i in range(20):
        assert f"#{i} a line far longer than the forty columns of this terminal, never cut or wrapped by rich\n" in out
    assert not view.live.is_started


def test_events_from_many_threads_while_the_view_refreshes(tmp_path):
    log = tmp_path / "run.log"
    log.write_text("".join(f"step {i} | loss {1 / (i + 1):.4f}\n" for i in range(200)))
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    view = LiveView(console, maximize=True, refresh_per_second=50)
    errors = []

    def worker(k):
        try:
            for j in range(40):
                row_id = 1000 * k + j
                view.experiment_started(row_id, f"idea {row_id}", 1, k, "")
                view.process_started(row_id, "train", log)
                view.write(f"line {row_id}")
                view.experiment_recorded(row(row_id, "discard", float(j), f"idea {row_id}"))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    view.close()
    assert not errors and view.recorded == 160 and not view.running
    out = console.file.getvalue()
    assert all(f"line {1000 * k + j}" in out for k in range(4) for j in range(40))


def test_a_real_session_with_two_workers_through_the_live_view(tmp_path):
    """The loop's own events, from its threads, into a LiveView on a terminal-like console: nothing fails (a failing
    observer would be switched off with a warning line), every line reaches the console, the journal's best is shown."""
    root = make_task(tmp_path / "ws", STEPPING, extra_config=ONE_SEED)
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    view = LiveView(console, root=root)
    said = []
    agent = ScriptedAgent(edit("LR = 0.1", "LR = 0.3"), edit("STEPS = 40", "STEPS = 24"), edit("LR = 0.1", "LR = 0.05"))

    def echo(line):
        said.append(line)
        view.write(line)

    run_session(root, tag="t", agent=agent, max_experiments=2, echo=echo, observers=[view], workers=2)
    out = ANSI.sub("", console.file.getvalue()).replace("\r", "\n")
    assert not [s for s in said if "live view failed" in s]
    assert all(line in out for line in said)
    assert view.closed and not view.live.is_started and view.recorded == len(journal_rows(root)) >= 2 and not view.running
    assert view.metric == "score" and view.maximize is True and view.best is not None
    assert re.search(r"^#[234] +.*━.* run 1( .*)?$", out, re.M)


def test_throughput_is_parsed_beside_progress_which_is_unchanged():
    line = "step    25 | loss 3.2104 | lr x1.00 | 24,843 tok/s | mfu 1.2%"
    assert parse_progress(line) == (25, 3.2104) and parse_throughput(line) == 24843.0
    assert parse_throughput("throughput 12,345 tokens/s over 10 timed steps") == 12345.0
    assert parse_throughput("1.5M tok/s") == 1.5e6 and parse_throughput("3.5k tokens/s") == 3500.0
    assert parse_throughput("step 1 | loss 2.0") is None and parse_throughput("x" * 5000 + " 5 tok/s") is None
