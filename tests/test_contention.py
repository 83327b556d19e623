"""Contention measurement with real subprocesses and real CPU burners: dilation under load, and the budget rule it widens."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from autoresearch.contention import Contention, GroupSampler, allowed_seconds
from autoresearch.executors.local import LocalExecutor

pytestmark = pytest.mark.skipif(not Path(f"/proc/self/task/{os.getpid()}/schedstat").exists(),
                                reason="needs Linux /proc/<pid>/task/<tid>/schedstat")

CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
BURN = "import time\nt=time.time()\nwhile time.time()-t<15: pass"


@contextmanager
def burners(n):
    """`n` CPU-burning processes, each in its own session (so its own autogroup: the scheduler shares CPU between
    sessions, and burners in the test's session would barely slow a run in its own); each exits by itself after 15 s."""
    procs = []
    try:
        for _ in range(n):
            procs.append(subprocess.Popen([sys.executable, "-c", BURN], start_new_session=True))
        time.sleep(0.2)  # let them get going
        yield procs
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def run_script(tmp_path, name, source, limit=60.0):
    script = tmp_path / f"{name}.py"
    script.write_text(textwrap.dedent(source))
    return LocalExecutor(kill_grace=1.0).run(tmp_path, f"{sys.executable} {script.name}", {}, limit,
                                             tmp_path / f"{name}.log")


def busy_seconds(seconds):
    return f"import time\nt = time.time()\nwhile time.time() - t < {seconds}: pass\n"


def test_a_cpu_bound_run_under_load_reports_its_dilation(tmp_path):
    with burners(2 * CORES - 1):  # with the run itself, twice as many CPU-bound processes as cores
        out = run_script(tmp_path, "busy", busy_seconds(2.0))
    assert out.returncode == 0, out.log_tail
    assert out.cpu_seconds is not None and out.cpu_seconds > 0
    assert out.dilation >= 1.4, (out.dilation, out.cpu_seconds, out.wall_seconds)


def test_a_run_that_only_sleeps_reports_no_dilation(tmp_path):
    """Its busiest thread uses well under 0.05 s of CPU (a Python child's own start-up can use more), so R = 1."""
    out = LocalExecutor().run(tmp_path, "sleep 1", {}, 30, tmp_path / "sleepy.log")
    assert out.returncode == 0, out.log_tail
    assert out.cpu_seconds is not None and out.cpu_seconds < 0.05
    assert out.dilation == 1.0


def test_low_priority_helpers_that_only_wait_do_not_inflate_the_dilation(tmp_path):
    """A busy main loop plus nice-19 busy children that starve behind it: the busiest thread (the main loop)
    sets R, though the helpers waited far longer than they ran."""
    helpers = 3 * CORES
    script = tmp_path / "helpers.py"
    script.write_text(textwrap.dedent(f"""\
        import subprocess, sys, time
        HELPER = "import os, time\\nos.nice(19)\\nt = time.time()\\nwhile time.time() - t < 2.0: pass"
        kids = [subprocess.Popen([sys.executable, "-c", HELPER]) for _ in range({helpers})]
        t = time.time()
        while time.time() - t < 2.0: pass
        for k in kids: k.wait()
        """))
    proc = subprocess.Popen([sys.executable, script.name], cwd=tmp_path, start_new_session=True)
    sampler = GroupSampler(proc.pid).start()
    try:
        proc.wait(timeout=30)
    finally:
        result = sampler.stop()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    stats = list(sampler.latest.values())
    assert len({pid for pid, _ in sampler.latest}) >= helpers + 1  # the helpers were seen
    summed = (result.cpu_seconds + result.wait_seconds) / result.cpu_seconds
    worst = max((c + w) / c for c, w in stats if c > 0)
    # The busiest thread's own dilation, however loaded the machine is: a sum, or the worst thread, says more.
    busiest = max(stats, key=lambda cw: cw[0])
    assert result.dilation == pytest.approx(min(10.0, max(1.0, sum(busiest) / busiest[0]))), (result, worst)
    assert summed > result.dilation and worst > result.dilation, (result, summed, worst)


def test_allowed_seconds_stretches_the_allowance_by_the_clamped_dilation():
    assert allowed_seconds(60, 30, 1.0) == 90
    assert allowed_seconds(60, 30, 2.5) == 135
    assert allowed_seconds(60, 30, 0.3) == 90  # never below the quiet-machine rule
    assert allowed_seconds(60, 30, 50.0) == 360  # capped at 10
    assert allowed_seconds(8, 0, 7.0) == 8
    assert Contention(None, None).dilation == 1.0


def calibrated_iterations(cpu_seconds):
    """How many module-level `for _ in range(n): pass` iterations (as the scripts below run them) take `cpu_seconds`
    of CPU here, measured in CPU time so that load on the machine does not skew it."""
    n = 2_000_000
    while True:
        probe = f"import time\nt = time.process_time()\nfor _ in range({n}): pass\nprint(time.process_time() - t)\n"
        used = float(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout)
        if used >= 0.2:
            return int(n * cpu_seconds / used)
        n *= 2


def test_honest_start_up_under_load_fits_and_training_past_the_budget_does_not(tmp_path):
    budget, allowance = 8.0, 2.0
    # ~1.25 s of CPU-bound start-up: R is the whole run's, so the load must not change much between start-up and
    # training; 1.25 s of 2 leaves room both ways (honest fits while R_startup <= 1.5 R; the cheat is caught while
    # R_startup > 0.65 R at R = 2).
    n = calibrated_iterations(1.25)
    startup = f"import time\nt0 = time.time()\nfor _ in range({n}): pass\nprint('startup:', time.time() - t0)\n"
    honest = startup + busy_seconds(budget)
    cheat = startup + busy_seconds(1.3 * budget)
    runs = {}
    for name, source in (("honest", honest), ("cheat", cheat)):  # one after the other: each gets fresh burners
        with burners(max(1, 3 * CORES // 2 - 1)):  # with the run, 1.5 CPU-bound processes a core (2 burners on 2)
            runs[name] = run_script(tmp_path, name, source)
    h, c = runs["honest"], runs["cheat"]
    assert h.returncode == 0 and c.returncode == 0, (h.log_tail, c.log_tail)
    assert h.dilation > 1.2 and c.dilation > 1.2, (h, c)  # the load was real
    assert h.wall_seconds <= allowed_seconds(budget, allowance, h.dilation), (h.wall_seconds, h.dilation, h.log_tail)
    assert c.wall_seconds > allowed_seconds(budget, allowance, c.dilation), (c.wall_seconds, c.dilation, c.log_tail)
