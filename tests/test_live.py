"""The live view: rich on a real pseudo-terminal, plain lines when stdout is not a terminal or under --quiet."""

import fcntl
import io
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

from rich.console import Console

from autoresearch.live import LiveView, tokens_per_second
from tasks import NUMPY_TASK, make_task

# The numpy task printing a progress line per step, as a training script does.
PRINTING = NUMPY_TASK.replace(
    "for _ in range(STEPS):\n    w -=",
    "import time\nfor i in range(STEPS):\n    time.sleep(0.03)\n"
    "    print(f'step {i} | loss {float(np.mean((x @ w - y) ** 2)):.4f} | 1,234 tok/s', flush=True)\n    w -=")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def in_pty(argv, cwd, timeout=180, columns=140):
    """Run argv with stdin, stdout and stderr on a real pseudo-terminal; (exit code, everything it wrote)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": str(columns)}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(argv, cwd=cwd, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    out, end = b"", time.monotonic() + timeout
    while time.monotonic() < end:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # the other side closed
                break
            if not data:
                break
            out += data
        elif proc.poll() is not None:
            break
    proc.wait(timeout=30)
    os.close(master)
    return proc.returncode, out.decode("utf-8", "replace")


def run_args(tag):
    return [sys.executable, "-m", "autoresearch", "run", "--tag", tag, "--agent", "perturb", "--max-experiments", "2"]


def test_on_a_terminal_the_live_view_shows_each_run_as_it_trains(tmp_path):
    root = make_task(tmp_path / "ws", train=PRINTING)
    code, out = in_pty(run_args("t"), root)
    assert code == 0, out[-2000:]
    assert "\x1b[?25l" in out and out.rstrip().endswith("\x1b[?25h") or "\x1b[?25h" in out[-4000:]  # cursor back
    plain = ANSI.sub("", out)
    live = [line for line in plain.splitlines() if re.search(r"#\d+ w0 ", line)]
    assert live, plain[-2000:]  # one line per worker: the row, the worker, the description, the bar
    assert any("━" in line and re.search(r"\d+/1s", line) for line in live)
    assert any(re.search(r"step \d+  loss [\d.e-]+  1,234 tok/s", line) for line in live)  # read from the run's log
    assert "best score" in plain and "σ" in plain
    assert "keep" in plain and "Best score:" in plain  # the event lines and the final table are all there


def test_piped_output_and_quiet_are_plain_lines(tmp_path):
    root = make_task(tmp_path / "ws", train=PRINTING)
    piped = subprocess.run(run_args("p"), cwd=root, capture_output=True, text=True, timeout=180)
    assert piped.returncode == 0, piped.stderr
    assert "\x1b" not in piped.stdout and "best score" not in piped.stdout
    assert not re.search(r"#\d+ w0 ", piped.stdout)  # no live lines
    assert re.search(r"^#\d+ baseline: 3\+ run\(s\) of 1s$", piped.stdout, re.M)
    code, out = in_pty(run_args("q") + ["--quiet"], root)
    assert code == 0
    assert "best score" not in out and "\x1b[?25l" not in out  # no live area under --quiet, even on a terminal
    assert re.search(r"#\d+ baseline: 3\+ run\(s\) of 1s", ANSI.sub("", out))


class Row:
    def __init__(self, id, status, metric, description):
        self.id, self.status, self.metric, self.description = id, status, metric, description


def test_the_view_has_a_line_per_worker_and_a_spinner_with_the_cost_while_the_agent_thinks(tmp_path):
    console = Console(file=io.StringIO(), force_terminal=True, width=140, color_system=None)
    view = LiveView(console, metric="val_bpb", start=False)
    logs = []
    for worker, row in ((0, 7), (1, 8)):
        log = tmp_path / f"run{row}.log"
        log.write_text(f"step {10 * row} | loss {row / 2:.2f} | {1000 * row:,} tok/s\n")
        logs.append(log)
        view.experiment_started(row, f"idea {row}", 60.0, worker, f"CPU share {worker}")
        view.process_started(row, "train", log)
    view.standing(Row(3, "keep", 1.4523, "baseline"), 0.0041)
    view.experiment_recorded(Row(6, "discard", 1.4611, "a worse idea"))
    view.proposing(True, 0.0123)

    def text():
        with console.capture() as capture:
            console.print(view.render())
        return capture.get()

    shown = text()
    lines = shown.splitlines()
    assert [line.split()[:3] for line in lines[:2]] == [["#7", "w0", "idea"], ["#8", "w1", "idea"]]
    assert "step 70  loss 3.5  7,000 tok/s" in lines[0] and "step 80  loss 4  8,000 tok/s" in lines[1]
    assert "the agent is thinking" in shown and "$0.0123 spent so far" in shown
    assert "best val_bpb 1.452300 (#3)  σ 0.004100" in shown and "#6 a worse idea" in shown
    logs[0].write_text(logs[0].read_text() + "step 99 | loss 0.5 | 9 tok/s\n")  # the log grows as it trains
    view.proposing(False, 0.02)
    view.process_started(8, "evaluate", None)
    shown = text()
    assert "step 99  loss 0.5  9 tok/s" in shown and "evaluating" in shown.splitlines()[1]
    assert "thinking" not in shown
    view.experiment_recorded(Row(7, "keep", 1.44, "idea 7"))
    assert "#7 w0" not in text() and "keep" in text()
    assert tokens_per_second("step 3 | 12,345.5 tokens/s") == 12345.5 and tokens_per_second("loss 3") is None
