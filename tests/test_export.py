"""results.tsv as the anchor's notebook reads it, and `autoresearch export` (JSON, CSV), on a real journal with
every status and a failed first baseline."""

import csv
import io
import json
import subprocess
import sys

import pandas as pd
import pytest

from autoresearch import UsageError
from autoresearch.agents.base import Proposal
from autoresearch.export import FIELDS, SCHEMA
from autoresearch.session import run_session
from tasks import NUMPY_TASK, make_task
from tasks import journal_rows as rows
from test_loop import ScriptedAgent, edit

FAILS_ONCE = "import os\nMARK = {mark!r}\nif not os.path.exists(MARK):\n    open(MARK, 'w').close()\n" \
             "    raise SystemExit('first start: the data is not ready')\n"


@pytest.fixture(scope="module")
def journal(tmp_path_factory):
    """A tag whose first baseline failed (then passed on a second `run`), then a keep, a discard, a crash, a
    timeout and a refused edit."""
    tmp = tmp_path_factory.mktemp("export")
    outside = tmp / "outside"
    outside.mkdir()
    train = FAILS_ONCE.format(mark=str(outside / "ran")) + NUMPY_TASK
    root = make_task(tmp / "ws", train=train, factor=1.0, grace=1.0,
                     extra_config=f'\n[sandbox]\nwritable = ["{outside}"]\n')
    quiet = dict(tag="t", echo=lambda *_: None)
    with pytest.raises(UsageError, match="baseline run ended 'crash'"):
        run_session(root, agent=ScriptedAgent(), max_experiments=1, **quiet)
    agent = ScriptedAgent(edit("LR = 0.1", "LR = 0.3", "raise the step size"),
                          edit("STEPS = 40", "STEPS = 2", "far fewer steps"),
                          edit("w = np.zeros(3)", "w = np.zeros(3) + undefined_name", "a typo"),
                          edit("w = np.zeros(3)", "import time; time.sleep(30); w = np.zeros(3)", "sleep first"),
                          lambda c: Proposal("touch the data", {"prepare.py": "DATA = 2\n"}))
    run_session(root, agent=agent, max_experiments=4, **quiet)
    return root


def test_the_journal_holds_every_status_and_the_failed_baseline(journal):
    got = [(r["description"], r["status"]) for r in rows(journal)]
    assert got == [("baseline", "crash"), ("baseline", "keep"), ("raise the step size", "keep"),
                   ("far fewer steps", "discard"), ("a typo", "crash"), ("sleep first", "timeout"),
                   ("touch the data", "invalid")]


def test_results_tsv_reads_true_the_way_the_anchors_notebook_reads_it(journal):
    # The notebook's own reading: five columns, upper-cased statuses, crashes filtered out, the first valid row as
    # the baseline, the kept rows' running best as the frontier.
    df = pd.read_csv(journal / "results.tsv", sep="\t")
    df["score"] = pd.to_numeric(df["score"], errors="coerce")
    df["status"] = df["status"].str.strip().str.upper()
    assert list(df.columns) == ["commit", "score", "memory_gb", "status", "description"]
    assert set(df["status"]) == {"KEEP", "DISCARD", "CRASH"}  # only the three statuses it knows
    done = [r for r in rows(journal) if r["state"] == "done"]
    measured = [r for r in done if r["status"] in ("keep", "discard")]
    assert len(df) == len(done) - 1  # the failed baseline is left out
    valid = df[df["status"] != "CRASH"].reset_index(drop=True)
    assert valid.loc[0, "score"] == pytest.approx(measured[0]["metric"], abs=1e-6)  # the real baseline
    assert df.iloc[0]["description"] == "baseline" and df.iloc[0]["status"] == "KEEP"
    # every valid point is a measured row, in order, at the x the notebook gives it
    assert valid["score"].tolist() == pytest.approx([r["metric"] for r in measured], abs=1e-6)
    kept = valid[valid["status"] == "KEEP"]
    assert kept.index.tolist() == [i for i, r in enumerate(measured) if r["status"] == "keep"]
    running_best = kept["score"].cummax()  # a maximized score; the notebook's cummin is for val_bpb
    assert running_best.iloc[-1] == pytest.approx(max(r["metric"] for r in measured if r["status"] == "keep"))
    baseline, best = valid.loc[0, "score"], running_best.iloc[-1]
    assert 0 < (best - baseline) / abs(baseline) * 100 < float("inf")  # a finite improvement, not "-inf%"
    # the finer status rides at the start of the description; crashes carry 0.0 as in the anchor
    crashes = df[df["status"] == "CRASH"]
    assert crashes["description"].tolist() == ["a typo", "[timeout] sleep first", "[invalid] touch the data"]
    assert (crashes["score"] == 0.0).all() and (crashes["memory_gb"] == 0.0).all()


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "autoresearch", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_export_json_holds_every_row_in_the_documented_schema(journal):
    out = cli("export", "--tag", "t", "--format", "json", cwd=journal)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["schema"] == SCHEMA and doc["branch"] == "autoresearch/t" and doc["tag"] == "t"
    assert doc["metric"] == {"name": "score", "direction": "maximize"}
    journal_rows = rows(journal)
    assert [e["id"] for e in doc["experiments"]] == [r["id"] for r in journal_rows]
    for e, r in zip(doc["experiments"], journal_rows):
        assert list(e) == [field for field, _, _ in FIELDS]  # every field, in the documented order
        assert (e["status"], e["description"], e["commit"], e["metric"]) == \
            (r["status"], r["description"], r["commit_sha"], r["metric"])
        assert e["values"] == json.loads(r["values_json"]) and isinstance(e["summary"], dict)
    kept = [e for e in doc["experiments"] if e["status"] == "keep"]
    assert kept[1]["parent_id"] == kept[0]["id"] and "+LR = 0.3" in kept[1]["diff"]
    assert doc["experiments"][0]["status"] == "crash" and "data is not ready" in doc["experiments"][0]["log_tail"]


def test_export_csv_matches_the_json(journal):
    out = cli("export", "--tag", "t", "--format", "csv", cwd=journal)
    assert out.returncode == 0, out.stderr
    table = list(csv.DictReader(io.StringIO(out.stdout)))
    doc = json.loads(cli("export", "--tag", "t", cwd=journal).stdout)  # json is the default
    assert list(table[0]) == [field for field, _, _ in FIELDS]
    assert [(int(t["id"]), t["status"], t["description"]) for t in table] == \
        [(e["id"], e["status"], e["description"]) for e in doc["experiments"]]
    for t, e in zip(table, doc["experiments"]):
        assert (float(t["metric"]) if t["metric"] else None) == e["metric"]
        assert json.loads(t["values"]) == e["values"] and t["diff"] == e["diff"]
    frame = pd.read_csv(io.StringIO(out.stdout))  # a notebook reads it in one call
    assert len(frame) == len(table) and frame["status"].tolist() == [t["status"] for t in table]


def test_export_of_an_unknown_tag_or_no_journal_is_a_one_line_error(journal, tmp_path):
    out = cli("export", "--tag", "nope", cwd=journal)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().splitlines() == ["autoresearch: error: no experiments on autoresearch/nope (tags with experiments: t)"]
    bare = make_task(tmp_path / "bare")
    out = cli("export", cwd=bare)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and "no experiments recorded" in out.stderr


def test_the_readme_documents_every_exported_field():
    from pathlib import Path
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for field, _, _ in FIELDS:
        assert f"| `{field}` |" in readme, field
