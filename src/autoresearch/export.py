"""`autoresearch export`: one tag's journal as JSON or CSV, in a documented schema that stays stable."""

from __future__ import annotations

import csv
import io
import json
import math

from autoresearch.ledger import Ledger, Row

SCHEMA = "autoresearch.export/1"

# (field, journal column, what it holds): the schema, in order. Add fields at the end; never rename or drop one.
FIELDS = (
    ("id", "id", "the experiment's row id in the journal (its trial ref is refs/autoresearch/<tag>/<id>)"),
    ("status", "status", "keep | discard | crash | timeout | invalid; null while running"),
    ("state", "state", "running | done"),
    ("metric", "metric", "the validation metric (mean over its runs); null when it has none"),
    ("description", "description", "the agent's one-line description of the change"),
    ("reason", "reason", "why it got its status (the decision, the crash, the refusal)"),
    ("commit", "commit_sha", "the candidate's commit; null for a refused edit"),
    ("parent_commit", "parent_commit", "the commit it edits"),
    ("parent_id", "parent_id", "its parent node in the search: the row it edits, or the crash it fixes"),
    ("trial_ref", "trial_ref", "refs/autoresearch/<tag>/<id>, which keeps the commit, kept or not"),
    ("agent", "agent", "who proposed it: tune, openai, anthropic, a CLI, baseline"),
    ("strategy", "strategy", "greedy | parallel | tree: how its parent was chosen"),
    ("worker", "worker", "the worker (device slot) it ran on"),
    ("attempt", "attempt", "0 for a new idea, 1..2 for fixes of a crash"),
    ("retry_of", "retry_of", "the row a kill cut off, which this one measures again"),
    ("rebased_from", "rebased_from", "the row whose change this re-bases onto a newer best"),
    ("values", "values_json", "the metric of each run (seed), a list"),
    ("seeds", "seeds_json", "the seed of each run, a list"),
    ("memory_gb", "memory_gb", "peak memory of the run, GB"),
    ("test_metric", "test_metric", "kept rows: the hidden test split's metric (mean); never shown to the agent"),
    ("test_values", "test_values_json", "kept rows: the hidden test split's metric per seed, a list"),
    ("test_state", "test_state", "kept rows with a test command: pending | done | failed"),
    ("started_at", "started_at", "when it started, Unix seconds"),
    ("ended_at", "ended_at", "when it was recorded, Unix seconds"),
    ("wall_seconds", "wall_seconds", "its runs' processes, timed by the harness"),
    ("experiment_seconds", "experiment_seconds", "the whole experiment: propose, git, run, record"),
    ("propose_seconds", "propose_seconds", "the agent's time thinking it up"),
    ("input_tokens", "input_tokens", "agent tokens in, since the previous row"),
    ("output_tokens", "output_tokens", "agent tokens out"),
    ("llm_calls", "llm_calls", "agent calls"),
    ("cost_usd", "cost_usd", "estimated agent spend, USD"),
    ("summary", "summary_json", "the run's summary keys (training_seconds, num_steps, ...), an object"),
    ("segment", "segment", "the measured segment (one protocol) it belongs to"),
    ("log_path", "log_path", "its run log"),
    ("log_tail", "log_tail", "the last lines of its log, for rows that were not kept"),
    ("diff", "diff", "its change against the parent, a unified diff"),
)
LISTS = {"values_json", "seeds_json", "test_values_json"}
OBJECTS = {"summary_json"}


def record(row: Row) -> dict:
    """One journal row in the export's schema (lists and objects decoded; non-finite numbers become null)."""
    out = {}
    for field, column, _ in FIELDS:
        value = getattr(row, column)
        if column in LISTS or column in OBJECTS:
            value = json.loads(value or ("[]" if column in LISTS else "{}"))
        elif isinstance(value, float) and not math.isfinite(value):
            value = None
        out[field] = value
    return out


def export_json(ledger: Ledger, maximize: bool) -> str:
    """The tag as one JSON document: what it is about, then every experiment in journal order."""
    doc = {"schema": SCHEMA, "branch": ledger.branch, "tag": ledger.tag,
           "metric": {"name": ledger.metric_name, "direction": "maximize" if maximize else "minimize"},
           "experiments": [record(r) for r in ledger.rows()]}
    return json.dumps(doc, indent=1, allow_nan=False) + "\n"


def export_csv(ledger: Ledger) -> str:
    """The tag as CSV with a header of the schema's fields; lists and objects are JSON in their cell."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([field for field, _, _ in FIELDS])
    for row in ledger.rows():
        values = record(row)
        writer.writerow(["" if values[f] is None else json.dumps(values[f]) if isinstance(values[f], (list, dict))
                         else values[f] for f, _, _ in FIELDS])
    return buffer.getvalue()
