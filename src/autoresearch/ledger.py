"""The record of every experiment: a SQLite journal (the truth) and results.tsv (Karpathy's five columns) made from it."""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

STATE_DIR = ".autoresearch"
STATUSES = ("keep", "discard", "crash", "timeout", "invalid")

SCHEMA = """
CREATE TABLE IF NOT EXISTS experiments (
    id INTEGER PRIMARY KEY,
    branch TEXT NOT NULL,
    parent_commit TEXT NOT NULL,
    commit_sha TEXT,
    description TEXT NOT NULL,
    agent TEXT NOT NULL,
    diff TEXT NOT NULL DEFAULT '',
    editable_hash TEXT,
    state TEXT NOT NULL DEFAULT 'running',      -- running | done
    status TEXT,                                -- keep | discard | crash | timeout | invalid
    reason TEXT NOT NULL DEFAULT '',
    metric REAL,
    memory_gb REAL,
    summary_json TEXT NOT NULL DEFAULT '{}',
    seed INTEGER,
    pid INTEGER,
    log_path TEXT,
    log_tail TEXT NOT NULL DEFAULT '',
    started_at REAL NOT NULL,
    ended_at REAL,
    wall_seconds REAL,                          -- the run's process, timed by the harness
    experiment_seconds REAL,                    -- the whole experiment: propose, git, run, record
    propose_seconds REAL,
    attempt INTEGER NOT NULL DEFAULT 0,         -- 0 for a new idea, 1..2 for fixes of a crash
    input_tokens INTEGER NOT NULL DEFAULT 0,    -- what the agent spent since the previous row
    output_tokens INTEGER NOT NULL DEFAULT 0,
    llm_calls INTEGER NOT NULL DEFAULT 0,
    cost_usd REAL NOT NULL DEFAULT 0,           -- estimated, from the price table
    values_json TEXT NOT NULL DEFAULT '[]',     -- the metric of each run (seed) of this experiment
    seeds_json TEXT NOT NULL DEFAULT '[]',
    test_metric REAL,                           -- kept candidates: the metric on the hidden test split (mean)
    test_values_json TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS by_branch ON experiments(branch, id);
"""


@dataclass
class Row:
    id: int
    branch: str
    parent_commit: str
    commit_sha: str | None
    description: str
    agent: str
    diff: str
    editable_hash: str | None
    state: str
    status: str | None
    reason: str
    metric: float | None
    memory_gb: float | None
    summary_json: str
    seed: int | None
    pid: int | None
    log_path: str | None
    log_tail: str
    started_at: float
    ended_at: float | None
    wall_seconds: float | None
    experiment_seconds: float | None
    propose_seconds: float | None
    attempt: int
    input_tokens: int
    output_tokens: int
    llm_calls: int
    cost_usd: float
    values_json: str
    seeds_json: str
    test_metric: float | None = None
    test_values_json: str = "[]"

    @property
    def values(self) -> list[float]:
        return json.loads(self.values_json)

    @property
    def summary(self) -> dict:
        return json.loads(self.summary_json)


class Ledger:
    """Journal rows for one branch, and the results.tsv that mirrors them."""

    def __init__(self, root: Path, branch: str, metric_name: str):
        self.root = Path(root)
        self.branch = branch
        self.metric_name = metric_name
        (self.root / STATE_DIR).mkdir(exist_ok=True)
        self.db = sqlite3.connect(self.root / STATE_DIR / "journal.sqlite", isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        columns = {r[1] for r in self.db.execute("PRAGMA table_info(experiments)")}
        for name, kind in (("test_metric", "REAL"), ("test_values_json", "TEXT NOT NULL DEFAULT '[]'")):
            if name not in columns:  # a journal written before the column existed
                self.db.execute(f"ALTER TABLE experiments ADD COLUMN {name} {kind}")

    def close(self) -> None:
        self.db.close()

    def rows(self, branch: str | None = None) -> list[Row]:
        cur = self.db.execute("SELECT * FROM experiments WHERE branch = ? ORDER BY id", (branch or self.branch,))
        return [Row(*r) for r in cur.fetchall()]

    def start(self, parent_commit: str, commit_sha: str | None, description: str, agent: str, diff: str,
              editable_hash: str | None, seed: int | None, attempt: int = 0, propose_seconds: float = 0.0,
              started_at: float | None = None) -> int:
        """Open a row (state 'running'); started_at is when the agent was asked, so the row spans the whole experiment."""
        cur = self.db.execute(
            "INSERT INTO experiments (branch, parent_commit, commit_sha, description, agent, diff, editable_hash, seed, attempt,"
            " propose_seconds, started_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (self.branch, parent_commit, commit_sha, description, agent, diff, editable_hash, seed, attempt, propose_seconds,
             started_at if started_at is not None else time.time()))
        return cur.lastrowid

    def bill(self, row_id: int, usage) -> None:
        """Add what the agent spent (tokens, calls, dollars) to a row."""
        self.db.execute("UPDATE experiments SET input_tokens = input_tokens + ?, output_tokens = output_tokens + ?,"
                        " llm_calls = llm_calls + ?, cost_usd = cost_usd + ? WHERE id = ?",
                        (usage.input_tokens, usage.output_tokens, usage.calls, usage.cost_usd, row_id))

    def total_cost(self) -> float:
        return self.db.execute("SELECT COALESCE(SUM(cost_usd), 0) FROM experiments WHERE branch = ?", (self.branch,)).fetchone()[0]

    def set_run(self, row_id: int, pid: int, log_path: str) -> None:
        self.db.execute("UPDATE experiments SET pid = ?, log_path = ? WHERE id = ?", (pid, log_path, row_id))

    def finish(self, row_id: int, status: str, reason: str = "", metric: float | None = None, summary: dict | None = None,
               wall_seconds: float | None = None, log_tail: str = "", values: list[float] = (), seeds: list[int] = ()) -> None:
        """Record an experiment's end in one transaction, then rewrite results.tsv from the journal."""
        assert status in STATUSES, status
        summary = summary or {}
        memory = summary.get("peak_vram_mb")
        memory_gb = memory / 1024 if isinstance(memory, float) and math.isfinite(memory) else None
        now = time.time()
        started = self.db.execute("SELECT started_at FROM experiments WHERE id = ?", (row_id,)).fetchone()[0]
        self.db.execute(
            "UPDATE experiments SET state = 'done', status = ?, reason = ?, metric = ?, memory_gb = ?, summary_json = ?,"
            " wall_seconds = ?, log_tail = ?, ended_at = ?, experiment_seconds = ?, values_json = ?, seeds_json = ? WHERE id = ?",
            (status, reason, metric, memory_gb, json.dumps(summary, default=str), wall_seconds, log_tail, now, now - started,
             json.dumps(list(values)), json.dumps(list(seeds)), row_id))
        self.write_results_tsv()

    def set_test(self, row_id: int, metric: float | None, values: list[float]) -> None:
        self.db.execute("UPDATE experiments SET test_metric = ?, test_values_json = ? WHERE id = ?",
                        (metric, json.dumps(list(values)), row_id))

    def interrupted(self) -> list[Row]:
        return [r for r in self.rows() if r.state == "running"]

    def best(self) -> Row | None:
        """The latest keep: the branch's tip, whose metric the next candidate must beat (direction-free, since
        every keep passed the decider against the keep before it)."""
        kept = [r for r in self.rows() if r.status == "keep" and r.metric is not None]
        return kept[-1] if kept else None

    def noise_sigma(self) -> float | None:
        """σ of the metric between seeds, pooled over every experiment measured more than once; None if none was."""
        pooled, dof = 0.0, 0
        for r in self.rows():
            values = r.values
            if r.state == "done" and len(values) > 1:
                mean = sum(values) / len(values)
                pooled += sum((v - mean) ** 2 for v in values)
                dof += len(values) - 1
        return math.sqrt(pooled / dof) if dof else None

    def measured_hashes(self) -> set[str]:
        return {r.editable_hash for r in self.rows() if r.editable_hash and r.state == "done" and r.status != "invalid"}

    def write_results_tsv(self) -> None:
        """results.tsv with Karpathy's header; crashes and other failures are written as 0.000000 and 0.0."""
        lines = [f"commit\t{self.metric_name}\tmemory_gb\tstatus\tdescription"]
        for r in self.rows():
            if r.state != "done":
                continue
            ok = r.status in ("keep", "discard") and r.metric is not None
            metric = f"{r.metric:.6f}" if ok else "0.000000"
            memory = f"{r.memory_gb:.1f}" if ok and r.memory_gb is not None else "0.0"
            description = " ".join(r.description.split()).replace("\t", " ")
            lines.append(f"{(r.commit_sha or '-')[:7]}\t{metric}\t{memory}\t{r.status}\t{description}")
        path = self.root / "results.tsv"
        tmp = path.with_name("results.tsv.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
