"""`autoresearch report`: its numbers from a journal of known rows, the plot's data, the HTML page's content and
self-containment, a run still under way, the real loop's journal, and the command line's exits."""

import base64
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from autoresearch import UsageError
from autoresearch.agents.base import Proposal
from autoresearch.lock import TagLock
from autoresearch.report import write_report
from autoresearch.session import run_session
from report_journal import Spec, night, write
from tasks import make_task

HOSTILE = '<script>alert("x")</script><img src="https://evil.example/x.png"> | `tick` **bold**'


def known_specs():
    """Keep, discard, crash, timeout, invalid, on two workers, a tree (a child of a discard), one row running."""
    t = dict(wall=10.0, training=8.0, evaluation=1.0, experiment=20.0, propose=3.0, strategy="tree")
    return [
        Spec("keep", 1.0, "baseline", values=[1.0, 1.002, 0.998], test_metric=1.004, **t),
        Spec("keep", 0.98, "raise the learning rate to 0.04", test_metric=0.984, tokens=(1000, 100, 1, 0.01), **t),
        Spec("discard", 0.99, "swap GELU for ReLU squared", worker=1, tokens=(2000, 200, 2, 0.02), **t),
        Spec("crash", None, "double the MLP width", reason="exit code 1",
             log_tail="Traceback (most recent call last):\nRuntimeError: shapes (4,8) and (9,8) do not match\n",
             tokens=(3000, 300, 1, 0.03), **t),
        Spec("timeout", None, "train twice as many steps", worker=1, reason="killed after 25s (budget 10s)", **t),
        Spec("invalid", None, "peek at the validation split", reason="a locked file changed: prepare.py", **t),
        Spec("keep", 0.95, HOSTILE, parent=1, worker=1, test_metric=0.99, tokens=(500, 50, 1, 0.005), **t),
        Spec("discard", 0.96, "warm up for 200 steps", parent=2, **t),
        Spec("running", None, "try value embeddings", worker=1, **t),
    ]


@pytest.fixture(scope="module")
def known(tmp_path_factory):
    """The journal of known_specs() and its report, made once for the tests that only read them."""
    root = make_task(tmp_path_factory.mktemp("known") / "ws")
    ledger = write(root, known_specs())
    return root, ledger, write_report(ledger, False)


class Page(HTMLParser):
    """What the tests look for in report.html: tags, attributes, table rows, and text outside scripts."""

    def __init__(self):
        super().__init__()
        self.tags, self.attrs, self.rows, self.text, self._in = [], [], {}, [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        self.attrs.append((tag, a))
        if tag == "tr" and "data-id" in a:
            self.rows[int(a["data-id"])] = a.get("data-status")
        self._in.append(tag)

    def handle_endtag(self, tag):
        if tag in self._in:
            while self._in and self._in.pop() != tag:
                pass

    def handle_data(self, data):
        if "script" not in self._in and "style" not in self._in:
            self.text.append(data)


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


def test_the_report_numbers_match_the_journal(known):
    root, ledger, written = known
    s = written.report.summary
    assert (s.baseline.metric, s.best.metric) == (1.0, 0.95) and s.best.id == ledger.best().id
    assert s.delta == pytest.approx(-0.05) and s.delta_pct == pytest.approx(-5.0) and s.gain == pytest.approx(0.05)
    assert (s.finished, s.running, s.candidates, s.kept, s.failed, s.invalid) == (8, 1, 7, 2, 2, 1)
    assert s.keep_rate == pytest.approx(2 / 7) and s.failed_rate == pytest.approx(2 / 7)
    assert s.per_hour == pytest.approx(8 / (160 / 3600))  # 8 finished rows of 20 s each, back to back
    # Eight finished runs of 10 s (8 training, 1 in the evaluator), 20 s each in all, 3 s of agent for each candidate.
    assert (s.time["training_seconds"], s.time["evaluation_seconds"], s.time["agent_seconds"], s.time["harness_seconds"]) \
        == pytest.approx((64.0, 24.0, 21.0, 51.0))
    assert (s.input_tokens, s.output_tokens, s.llm_calls, s.cost_usd) == (6500, 650, 5, pytest.approx(0.065))
    assert (s.workers, s.tree, s.draws_tree) == (2, True, True)

    md = written.md.read_text()
    assert "| baseline → best | 1.000000 → **0.950000**: -0.050000 (-5.00%), better |" in md
    assert "| kept | 2 (28.6% of candidates) |" in md and "| crashed or timed out | 2 (28.6% of candidates) |" in md
    assert "| experiments per hour | 180.0 |" in md
    for line in ("| training | 1m 04s (64 s) | 40.0% |", "| start-up and evaluation | 24s (24 s) | 15.0% |",
                 "| agent proposing | 21s (21 s) | 13.1% |", "| harness (checks, git, recording) | 51s (51 s) | 31.9% |",
                 "| input tokens | 6,500 |", "| output tokens | 650 |", "| LLM calls | 5 |", "| dollars (estimated) | $0.0650 |"):
        assert line in md, line


def test_deltas_follow_the_search_tree(known):
    _, _, written = known
    by_id = {x.row.id: x for x in written.report.experiments}
    assert by_id[1].delta is None  # the root
    assert by_id[7].parent == 2 and by_id[7].delta == pytest.approx(0.95 - 0.98)  # parent_id names a keep
    assert by_id[8].parent == 3 and by_id[8].delta == pytest.approx(0.96 - 0.99)  # a child of a discard
    assert [x.row.id for x in written.report.top] == [7, 8, 2, 3]  # by gain, best first
    assert [(k.row.id, k.delta) for k in written.report.kept] == [(1, None), (2, pytest.approx(-0.02)), (7, pytest.approx(-0.03))]
    assert set(written.report.flags) == {7}  # val gained 0.03, the test split got worse


def test_progress_png_plots_every_keep_and_marks_failures(known):
    root, ledger, written = known
    data = written.png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(written.png) as image:
        assert image.size == (1600, 800)
        assert sum(image.convert("L").histogram()[:250]) > 20_000  # not blank: pixels other than white
    p = written.progress
    kept = [r for r in ledger.rows() if r.status == "keep"]
    assert len(p.kept_x) == len(kept) == 3
    assert p.kept_x == [1.0, 2.0, 7.0] and p.kept_y == pytest.approx([1.0, 0.98, 0.95])
    assert p.discarded_x == [3.0, 8.0] and p.test_x == [1.0, 2.0, 7.0] and p.test_y == pytest.approx([1.004, 0.984, 0.99])
    assert p.marked == {"crash": [4.0], "timeout": [5.0], "invalid": [6.0], "running": [9.0]}
    assert p.best_y == pytest.approx([1.0, 0.98, 0.95, 0.95]) and p.best_x[-1] == 9
    assert p.sigma == pytest.approx(ledger.noise_sigma()) and len(p.labels) == 3


def test_report_html_is_self_contained_and_has_every_experiment(known):
    root, ledger, written = known
    page = parse(written.html)
    assert page.rows == {r.id: (r.status or "running") for r in ledger.rows()}  # a row per id, running shown as running
    assert page.rows[9] == "running"
    remote = [(tag, k, v) for tag, a in page.attrs for k, v in a.items()
              if k in ("src", "href", "action", "poster", "data", "srcset") and v and re.match(r"\s*(https?:)?//", v, re.I)]
    assert remote == []
    assert page.tags.count("script") == 1 and page.tags.count("img") == 1 and "link" not in page.tags  # the hostile text is text
    img = next(a for tag, a in page.attrs if tag == "img")
    assert base64.b64decode(img["src"].removeprefix("data:image/png;base64,")) == written.png.read_bytes()
    script = next(a for tag, a in page.attrs if tag == "script")
    assert "src" not in script
    source = written.html.read_text()
    assert "@import" not in source and "url(" not in source
    text = "".join(page.text)
    assert HOSTILE in text  # shown as written, escaped
    assert "shapes (4,8) and (9,8) do not match" in text and "killed after 25s (budget 10s)" in text
    assert 'id="tree"' in source and 'href="#e8"' in source  # two workers and the tree strategy: the tree is drawn
    assert "-LR = " in text and 'style="color: #A00000"' in source  # the diffs, highlighted by pygments


def test_report_md_lists_kept_changes_diffs_crashes_and_disagreements(known):
    _, ledger, written = known
    md = written.md.read_text()
    sections = md.split("\n## ")
    kept = next(s for s in sections if s.startswith("Kept changes"))
    order = [kept.index(f"#{i} ") for i in (1, 2, 7)]
    assert order == sorted(order)
    assert "raise the learning rate to 0.04" in kept and "(-0.020000 vs the previous best 1.000000)" in kept
    prose = re.sub(r"(`{3,})[a-z]*\n.*?\n\1", "", md, flags=re.S)  # code fences show text as it is
    assert "\\<script\\>alert" in kept and not re.search(r"(?<!\\)[<>]", prose)  # journal text is escaped
    assert kept.count("```diff\n") == 2  # the baseline has no diff
    crashed = next(s for s in sections if s.startswith("Ideas that crashed"))
    assert "double the MLP width" in crashed and "exit code 1" in crashed and "RuntimeError: shapes (4,8)" in crashed
    assert "train twice as many steps" in crashed and "killed after 25s (budget 10s)" in crashed
    assert "a locked file changed: prepare.py" in next(s for s in sections if s.startswith("Invalid"))
    flags = next(s for s in sections if s.startswith("Val/test disagreements (1)"))
    assert "#7 " in flags and "hidden test split" in flags
    assert "Search tree" in md and "1 still running" in md


def test_a_journal_with_only_a_running_baseline_still_reports(tmp_path):
    ledger = write(tmp_path, [Spec("running", None, "baseline")])
    written = write_report(ledger, False, tmp_path / "out")
    assert written.progress.kept_x == [] and written.progress.marked == {"running": [1.0]}
    assert "no kept measurement yet" in written.md.read_text()
    assert parse(written.html).rows == {1: "running"}


def test_a_maximized_metric_counts_gains_upwards(tmp_path):
    ledger = write(tmp_path, night(30, 5, maximize=True, seed=2), maximize=True, metric="score")
    written = write_report(ledger, True, tmp_path / "out")
    s = written.report.summary
    assert s.gain > 0 and s.delta > 0 and s.best.metric == max(r.metric for r in ledger.rows() if r.status == "keep")
    assert written.progress.best_y == sorted(written.progress.best_y)  # the running best only rises
    assert all(k.gain > 0 for k in written.report.kept[1:])


def test_120_experiments_with_20_keeps_have_every_label_apart(tmp_path):
    ledger = write(tmp_path, night(120, 20, seed=1))
    written = write_report(ledger, False, tmp_path / "out")
    p = written.progress
    assert len(p.kept_x) == 21 and len(p.labels) == 21  # the baseline and 20 keeps, each labelled
    boxes = [box for _, box in p.labels]
    for i, a in enumerate(boxes):
        assert 0 <= a[0] and a[2] <= p.width_px and 0 <= a[1] and a[3] <= p.height_px
        for b in boxes[:i]:
            assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]), (a, b)


def test_the_report_of_a_real_run(tmp_path):
    """The loop's own journal: a baseline, a kept change, a discarded one and a crash on the numpy task."""
    root = make_task(tmp_path / "ws")

    def step(description, old, new):
        return lambda c: Proposal(description, {"train.py": c.files["train.py"].replace(old, new)})

    class Agent:
        name = "scripted"

        def __init__(self):
            self.steps = [step("raise LR to 0.3", "LR = 0.1", "LR = 0.3"), step("fewer steps", "STEPS = 40", "STEPS = 5"),
                          step("divide by zero", "score = -", "score = 1 / 0 - ")]

        def propose(self, context):
            return self.steps.pop(0)(context) if self.steps else None

        def observe(self, result):
            pass

    ledger, maximize = run_session(root, tag="t", agent=Agent(), max_experiments=3, echo=lambda *_: None)
    written = write_report(ledger, maximize)
    rows = ledger.rows()
    assert written.html.parent == root / ".autoresearch" / "report" / "t"
    assert len(written.progress.kept_x) == sum(r.status == "keep" for r in rows) >= 2
    assert {r.status for r in rows} >= {"keep", "discard", "crash"}
    md = written.md.read_text()
    assert "raise LR to 0.3" in md.split("## Kept changes")[1].split("\n## ")[0]
    assert "divide by zero" in md.split("## Ideas that crashed")[1] and "ZeroDivisionError" in md
    assert set(parse(written.html).rows) == {r.id for r in rows}


def cli(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    return subprocess.run([sys.executable, "-m", "autoresearch", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_the_cli_writes_three_files_while_the_tag_is_locked(tmp_path, monkeypatch, capsys):
    root = make_task(tmp_path / "ws")  # its metric: score, maximized
    write(root, night(20, 4, maximize=True, running=1), maximize=True, metric="score").close()
    with TagLock(root / ".autoresearch", "t"):  # a run holds the tag: the report only reads the journal
        result = cli("report", "--workspace", str(root), "--tag", "t")
    assert result.returncode == 0, result.stderr
    folder = root / ".autoresearch" / "report" / "t"
    assert result.stdout.splitlines() == [f"Wrote {folder / name}" for name in ("progress.png", "report.md", "report.html")]
    assert all((folder / name).stat().st_size > 0 for name in ("progress.png", "report.md", "report.html"))
    assert not (root / "report.html").exists() and not (root / "progress.png").exists()

    from autoresearch.cli import main

    monkeypatch.chdir(root)  # --out, relative to where the command runs (in this process: one import of matplotlib less)
    assert main(["report", "--tag", "t", "--out", "elsewhere"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3
    assert sorted(p.name for p in (root / "elsewhere").iterdir()) == ["progress.png", "report.html", "report.md"]


@pytest.mark.parametrize("tag, fragment", [(None, "no experiments recorded"), ("nosuch", "autoresearch/nosuch")])
def test_the_cli_refuses_a_workspace_without_a_journal_or_an_unknown_tag(tmp_path, tag, fragment):
    root = make_task(tmp_path / "ws")
    if tag:
        write(root, [Spec("keep", 1.0, "baseline")], maximize=True, metric="score").close()
    result = cli("report", "--workspace", str(root), *(["--tag", tag] if tag else []))
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("autoresearch: error:") and fragment in lines[0], result.stderr
    if tag:
        assert "tags with experiments: t" in lines[0]
    assert not (root / ".autoresearch" / "report").exists()


def test_write_report_refuses_an_out_that_is_a_file(tmp_path):
    ledger = write(tmp_path, [Spec("keep", 1.0, "baseline")])
    (tmp_path / "taken").write_text("x")
    with pytest.raises(UsageError, match="cannot write the report"):
        write_report(ledger, False, tmp_path / "taken")
