"""The record of every experiment: a SQLite journal (the truth) and results.tsv (Karpathy's five columns) made from it."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from autoresearch import UsageError
from autoresearch.failpoints import failpoint
from autoresearch.orphans import pid_alive

STATE_DIR = ".autoresearch"
STATUSES = ("keep", "discard", "crash", "timeout", "invalid")
INTERRUPTED = "interrupted:"  # the reason of a row cut off by a kill or Ctrl-C

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
CREATE TABLE IF NOT EXISTS protocols (
    branch TEXT NOT NULL,
    segment INTEGER NOT NULL,
    protocol_json TEXT NOT NULL,                -- budget, seeds, threshold, device, commands, locked files' hash
    started_at REAL NOT NULL,
    PRIMARY KEY (branch, segment)
);
"""

# Columns added after the first release: (name, type), added to an older journal when it is opened.
ADDED_COLUMNS = (
    ("test_metric", "REAL"), ("test_values_json", "TEXT NOT NULL DEFAULT '[]'"),
    ("segment", "INTEGER NOT NULL DEFAULT 1"),  # the measured segment (one protocol) the row belongs to
    ("trial_ref", "TEXT"),                      # refs/autoresearch/<tag>/<id>: the candidate commit, kept or not
    ("owner_host", "TEXT"), ("owner_pid", "INTEGER"), ("worker", "INTEGER NOT NULL DEFAULT 0"),
    ("heartbeat_at", "REAL"),                   # the owner's last sign of life
    ("pids_json", "TEXT NOT NULL DEFAULT '[]'"),  # every process group the trial started: [pid, identity]
    ("retry_of", "INTEGER"),                    # a re-measurement of a row cut off by a kill
    ("test_state", "TEXT"),                     # kept rows with a test command: pending | done | failed
    ("protection_json", "TEXT"),                # what the row's runs had: sandbox, held-out paths hidden, evaluator
    ("parent_id", "INTEGER"),                   # its parent node in the search: the row it edits, or the crash it fixes
    ("rebased_from", "INTEGER"),                # a re-base onto a newer best of that row's change
    ("strategy", "TEXT"),                       # greedy | parallel | tree: how its parent was chosen
)



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
    segment: int = 1
    trial_ref: str | None = None
    owner_host: str | None = None
    owner_pid: int | None = None
    worker: int = 0
    heartbeat_at: float | None = None
    pids_json: str = "[]"
    retry_of: int | None = None
    test_state: str | None = None
    protection_json: str | None = None
    parent_id: int | None = None
    rebased_from: int | None = None
    strategy: str | None = None

    @property
    def protection(self) -> dict | None:
        """What the row's runs had (sandbox, hidden paths, evaluator); None for rows journaled before it was kept."""
        return json.loads(self.protection_json) if self.protection_json else None

    @property
    def values(self) -> list[float]:
        return json.loads(self.values_json)

    @property
    def summary(self) -> dict:
        return json.loads(self.summary_json)


class Ledger:
    """Journal rows for one branch, and the results.tsv tables that mirror them.

    The best is the best kept measurement of the branch's current segment, in the metric's direction, among the
    keeps that no later keep was built on: a keep supersedes its parent (a kept simplification may be a little
    worse than the parent it simplifies, within the noise, and is still the new best). A commit measured more than
    once counts by its latest measurement (`autoresearch baseline` refreshes it). Sequentially that is the latest
    keep; concurrent keeps (several workers on one parent) follow the same rule: the best of them is the best, the
    branch is moved to it by compare-and-swap, and equal metrics go to the earlier row."""

    def __init__(self, root: Path, branch: str, metric_name: str, maximize: bool = False):
        self.root = Path(root)
        self.branch = branch
        self.metric_name = metric_name
        self.maximize = maximize
        self.tag = branch.removeprefix("autoresearch/")
        self.results_path: Path | None = self.root / "results.tsv"  # None: this run may not write the root table
        state = self.root / STATE_DIR
        state.mkdir(exist_ok=True)
        if not (state / ".gitignore").exists():  # the harness's state is never part of anybody's commit
            (state / ".gitignore").write_text("*\n")
        for tmp in state.glob(".*.tmp"):  # a table rewrite a kill cut short (a live writer's file is its own pid's)
            pid = tmp.name.rsplit(".", 2)[-2]
            if not (pid.isdigit() and pid_alive(int(pid))):
                tmp.unlink(missing_ok=True)
        path = state / "journal.sqlite"
        try:
            self.db = sqlite3.connect(path, isolation_level=None, timeout=30)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(SCHEMA)
            columns = {r[1] for r in self.db.execute("PRAGMA table_info(experiments)")}
            for name, kind in ADDED_COLUMNS:
                if name not in columns:  # a journal written before the column existed
                    self.db.execute(f"ALTER TABLE experiments ADD COLUMN {name} {kind}")
        except sqlite3.DatabaseError as exc:
            raise UsageError(f"the journal {path} cannot be read ({exc}); move it aside to start afresh, "
                             "or restore it from a backup") from None
        self.segment = self.db.execute("SELECT COALESCE(MAX(segment), 1) FROM protocols WHERE branch = ?",
                                       (branch,)).fetchone()[0]

    def close(self) -> None:
        self.db.close()

    def rows(self, branch: str | None = None) -> list[Row]:
        return self.where("1", (), branch)

    def require_rows(self, doing: str = "") -> list[Row]:
        """The branch's rows, or a one-line error naming the tags that have some (`doing` follows the branch)."""
        rows = self.rows()
        if not rows:
            known = ", ".join(b.removeprefix("autoresearch/") for b in self.branches()) or "none"
            raise UsageError(f"no experiments on {self.branch}{doing} (tags with experiments: {known})")
        return rows

    def where(self, condition: str, params: tuple = (), branch: str | None = None) -> list[Row]:
        """The branch's rows matching an SQL condition, in order: most callers need a few rows of a long journal."""
        cur = self.db.execute(f"SELECT {COLUMNS} FROM experiments WHERE branch = ? AND ({condition}) ORDER BY id",
                              (branch or self.branch, *params))
        return [Row(*r) for r in cur.fetchall()]

    def commits(self) -> set[str]:
        """Every commit the branch's rows name, as parent or candidate: the commits the harness put there."""
        return {c for pair in self.db.execute("SELECT parent_commit, commit_sha FROM experiments WHERE branch = ?",
                                              (self.branch,)) for c in pair if c}

    def branches(self) -> list[str]:
        return [b for (b,) in self.db.execute("SELECT DISTINCT branch FROM experiments ORDER BY branch")]

    def history(self) -> list[sqlite3.Row]:
        """What the agent's context needs of every finished row, without the logs."""
        self.db.row_factory = sqlite3.Row
        try:
            return self.db.execute("SELECT id, commit_sha, metric, status, description, reason, agent,"
                                   " CASE WHEN status = 'keep' THEN diff ELSE '' END AS diff FROM experiments"
                                   " WHERE branch = ? AND state = 'done' ORDER BY id", (self.branch,)).fetchall()
        finally:
            self.db.row_factory = None

    # -- the protocol ------------------------------------------------------------------------------------------

    def protocol(self) -> dict | None:
        """The protocol the current segment is measured under, or None before the branch's first baseline."""
        found = self.db.execute("SELECT protocol_json FROM protocols WHERE branch = ? AND segment = ?",
                                (self.branch, self.segment)).fetchone()
        return json.loads(found[0]) if found else None

    def start_segment(self, protocol: dict) -> int:
        """Record the protocol of a new measured segment (the first one of a branch included)."""
        segment = self.segment + 1 if self.protocol() is not None else self.segment
        self.db.execute("INSERT OR REPLACE INTO protocols (branch, segment, protocol_json, started_at) VALUES (?, ?, ?, ?)",
                        (self.branch, segment, json.dumps(protocol, sort_keys=True), time.time()))
        self.segment = segment
        return segment

    # -- writing rows ------------------------------------------------------------------------------------------

    def start(self, parent_commit: str, commit_sha: str | None, description: str, agent: str, diff: str,
              editable_hash: str | None, seed: int | None, attempt: int = 0, propose_seconds: float = 0.0,
              started_at: float | None = None, retry_of: int | None = None, worker: int = 0, parent_id: int | None = None,
              rebased_from: int | None = None, strategy: str | None = None) -> int:
        """Open a row (state 'running') owned by this process; started_at is when the agent was asked, so the row
        spans the whole experiment."""
        now = time.time()
        cur = self.db.execute(
            "INSERT INTO experiments (branch, parent_commit, commit_sha, description, agent, diff, editable_hash, seed, attempt,"
            " propose_seconds, started_at, segment, owner_host, owner_pid, worker, heartbeat_at, retry_of, parent_id,"
            " rebased_from, strategy) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (self.branch, parent_commit, commit_sha, description, agent, diff, editable_hash, seed, attempt, propose_seconds,
             started_at if started_at is not None else now, self.segment, socket.gethostname(), os.getpid(), worker, now,
             retry_of, parent_id, rebased_from, strategy))
        return cur.lastrowid

    def set_commit(self, row_id: int, commit_sha: str, ref: str, diff: str) -> None:
        self.db.execute("UPDATE experiments SET commit_sha = ?, trial_ref = ?, diff = ?, heartbeat_at = ? WHERE id = ?",
                        (commit_sha, ref, diff, time.time(), row_id))

    def beat(self, row_id: int) -> None:
        """The owner is alive and working on this row."""
        self.db.execute("UPDATE experiments SET heartbeat_at = ? WHERE id = ?", (time.time(), row_id))

    def bill(self, row_id: int, usage) -> None:
        """Add what the agent spent (tokens, calls, dollars) to a row."""
        self.db.execute("UPDATE experiments SET input_tokens = input_tokens + ?, output_tokens = output_tokens + ?,"
                        " llm_calls = llm_calls + ?, cost_usd = cost_usd + ? WHERE id = ?",
                        (usage.input_tokens, usage.output_tokens, usage.calls, usage.cost_usd, row_id))

    def set_protection(self, row_id: int, protection: dict) -> None:
        self.db.execute("UPDATE experiments SET protection_json = ? WHERE id = ?", (json.dumps(protection), row_id))

    def add_propose_seconds(self, row_id: int, seconds: float) -> None:
        """Add agent time that led to no row of its own (no proposal, a duplicate) to a row's propose_seconds."""
        self.db.execute("UPDATE experiments SET propose_seconds = COALESCE(propose_seconds, 0) + ? WHERE id = ?",
                        (seconds, row_id))

    def total_cost(self) -> float:
        return self.db.execute("SELECT COALESCE(SUM(cost_usd), 0) FROM experiments WHERE branch = ?", (self.branch,)).fetchone()[0]

    def add_process(self, row_id: int, pid: int, identity: str, log_path: str | None = None) -> None:
        """A process group the trial started (training, evaluator, test split): recovery stops it if it outlives us.
        A training run's pid and log also go to the `pid` and `log_path` columns."""
        with self.db:
            pids = json.loads(self.db.execute("SELECT pids_json FROM experiments WHERE id = ?", (row_id,)).fetchone()[0])
            self.db.execute("UPDATE experiments SET pids_json = ?, heartbeat_at = ? WHERE id = ?",
                            (json.dumps(pids + [[pid, identity]]), time.time(), row_id))
            if log_path is not None:
                self.db.execute("UPDATE experiments SET pid = ?, log_path = ? WHERE id = ?", (pid, log_path, row_id))

    def finish(self, row_id: int, status: str, reason: str = "", metric: float | None = None, summary: dict | None = None,
               wall_seconds: float | None = None, log_tail: str = "", values: list[float] = (), seeds: list[int] = (),
               test_state: str | None = None) -> None:
        """Record an experiment's end in one transaction, then rewrite results.tsv from the journal."""
        assert status in STATUSES, status
        summary = summary or {}
        memory = summary.get("peak_vram_mb")
        memory_gb = memory / 1024 if isinstance(memory, float) and math.isfinite(memory) else None
        now = time.time()
        started = self.db.execute("SELECT started_at FROM experiments WHERE id = ?", (row_id,)).fetchone()[0]
        self.db.execute(
            "UPDATE experiments SET state = 'done', status = ?, reason = ?, metric = ?, memory_gb = ?, summary_json = ?,"
            " wall_seconds = ?, log_tail = ?, ended_at = ?, experiment_seconds = ?, values_json = ?, seeds_json = ?,"
            " test_state = ?, heartbeat_at = ? WHERE id = ?",
            (status, reason, metric, memory_gb, json.dumps(summary, default=str), wall_seconds, log_tail, now, now - started,
             json.dumps(list(values)), json.dumps(list(seeds)), test_state, now, row_id))
        self.write_results_tsv()

    def set_test(self, row_id: int, metric: float | None, values: list[float], state: str = "done") -> None:
        self.db.execute("UPDATE experiments SET test_metric = ?, test_values_json = ?, test_state = ? WHERE id = ?",
                        (metric, json.dumps(list(values)), state, row_id))

    # -- reading ---------------------------------------------------------------------------------------------------

    def interrupted(self) -> list[Row]:
        """Rows still open. Only the holder of the tag's lock calls this, so their owner is gone."""
        return self.where("state = 'running'")

    def to_retry(self) -> list[Row]:
        """Candidates cut off by a kill that were not re-measured yet (a re-measurement is tried once)."""
        return self.where("segment = ? AND state = 'done' AND reason LIKE ? AND commit_sha IS NOT NULL AND retry_of IS NULL"
                          " AND agent != 'baseline' AND id NOT IN (SELECT retry_of FROM experiments WHERE retry_of IS NOT NULL)",
                          (self.segment, INTERRUPTED + "%"))

    def pending_tests(self) -> list[Row]:
        return self.where("status = 'keep' AND test_state = 'pending'")

    def kept_ids(self) -> set[int]:
        return {i for (i,) in self.db.execute("SELECT id FROM experiments WHERE status = 'keep'")}

    def own_ids(self) -> set[int]:
        """The ids of this branch's rows: other tags' runs are theirs to clean up."""
        return {i for (i,) in self.db.execute("SELECT id FROM experiments WHERE branch = ?", (self.branch,))}

    def best(self) -> Row | None:
        """The best kept measurement of the current segment (see the class docstring)."""
        latest: dict[str, Row] = {}
        for r in self.where("segment = ? AND status = 'keep' AND metric IS NOT NULL", (self.segment,)):
            latest[r.commit_sha] = r
        superseded = {r.parent_commit for r in latest.values() if r.parent_commit != r.commit_sha}
        current = [r for c, r in latest.items() if c not in superseded] or list(latest.values())
        if not current:
            return None
        sign = -1.0 if self.maximize else 1.0
        return min(current, key=lambda r: (sign * r.metric, r.id))

    def noise_sigma(self) -> float | None:
        """σ of the metric between seeds, pooled over every experiment of the segment measured more than once."""
        pooled, dof = 0.0, 0
        for (values_json,) in self.db.execute("SELECT values_json FROM experiments WHERE branch = ? AND segment = ?"
                                              " AND state = 'done' AND values_json LIKE '%,%'", (self.branch, self.segment)):
            values = json.loads(values_json)
            if len(values) > 1:
                mean = sum(values) / len(values)
                pooled += sum((v - mean) ** 2 for v in values)
                dof += len(values) - 1
        return math.sqrt(pooled / dof) if dof else None

    def measured_hashes(self, running: bool = False) -> set[str]:
        """The editable files' hashes measured in the segment (and, with `running`, under way on a worker)."""
        state = "(state = 'done' AND status != 'invalid' OR state = 'running')" if running else \
            "state = 'done' AND status != 'invalid'"
        return {h for (h,) in self.db.execute(f"SELECT editable_hash FROM experiments WHERE branch = ? AND segment = ? AND"
                                              f" {state} AND editable_hash IS NOT NULL", (self.branch, self.segment))}

    def lineage(self, row: Row) -> list[Row]:
        """The node's ancestors in the search, root first, ending with the node itself (by `parent_id`; rows
        journaled before it existed follow the keep that made their parent commit)."""
        by_id = {r.id: r for r in self.rows()}
        kept = {r.commit_sha: r for r in by_id.values() if r.status == "keep" and r.commit_sha}
        chain, seen, node = [], set(), by_id.get(row.id, row)
        while node is not None and node.id not in seen:
            chain.append(node)
            seen.add(node.id)
            if node.parent_id is not None:
                node = by_id.get(node.parent_id)
            else:
                found = kept.get(node.parent_commit)
                node = found if found is not None and found.id < node.id and node.parent_commit != node.commit_sha else None
        return chain[::-1]

    def reopen(self) -> "Ledger":
        """The same journal through a connection of its own (for another thread)."""
        other = Ledger(self.root, self.branch, self.metric_name, self.maximize)
        other.results_path, other.segment = self.results_path, self.segment
        return other

    def write_results_tsv(self) -> None:
        """results.tsv with Karpathy's header, drawn so that the anchor's tools read the truth (see `tsv_line`).
        The tag's own copy is .autoresearch/tags/<tag>/results.tsv; the root one when this run owns it."""
        lines = [f"commit\t{self.metric_name}\tmemory_gb\tstatus\tdescription"]
        for r in self.db.execute("SELECT commit_sha, metric, memory_gb, status, description, agent, reason FROM experiments"
                                 " WHERE branch = ? AND state = 'done' ORDER BY id", (self.branch,)).fetchall():
            line = tsv_line(_TsvRow(*r))
            if line is not None:
                lines.append(line)
        text = "\n".join(lines) + "\n"
        own = self.root / STATE_DIR / "tags" / self.tag / "results.tsv"
        own.parent.mkdir(parents=True, exist_ok=True)
        for path in (own, self.results_path):
            if path is not None:
                write_atomically(path, text, self.root / STATE_DIR)


@dataclass
class _TsvRow:
    commit_sha: str | None
    metric: float | None
    memory_gb: float | None
    status: str
    description: str
    agent: str = ""
    reason: str = ""


TSV_STATUSES = ("keep", "discard", "crash")  # the only statuses the anchor's notebook and program.md know


def tsv_line(r) -> str | None:
    """One done row as a results.tsv line, or None for a failed baseline (left out: the anchor's tools take the
    first line as the baseline). A row with a metric is `keep` or `discard`; every other one is `crash` with
    0.000000 and 0.0, its finer status at the start of its description ("[timeout] ...", "[invalid] ...",
    "[stopped early] ...", "[interrupted] ..."). The journal and `autoresearch export` hold the full detail."""
    if r.agent == "baseline" and r.status != "keep":
        return None
    description = " ".join(r.description.split()).replace("\t", " ")
    if r.status in ("keep", "discard") and r.metric is not None and math.isfinite(r.metric):
        status, metric = r.status, f"{r.metric:.6f}"
        memory = f"{r.memory_gb:.1f}" if r.memory_gb is not None else "0.0"
    else:
        if r.status == "crash":
            finer = "interrupted" if r.reason.startswith(INTERRUPTED) else None
        elif r.status == "discard" and r.reason.startswith("stopped early"):
            finer = "stopped early"
        else:
            finer = r.status
        status, metric, memory = "crash", "0.000000", "0.0"
        description = f"[{finer}] {description}" if finer else description
    return f"{(r.commit_sha or '-')[:7]}\t{metric}\t{memory}\t{status}\t{description}"


def write_atomically(path: Path, text: str, scratch: Path) -> None:
    """Write via a temporary file in the harness's state folder (ignored by git, so a kill mid-write leaves nothing
    in the user's way), fsync it, and rename it over `path`."""
    tmp = scratch / f".{path.name}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    failpoint("results.tsv")
    os.replace(tmp, path)


COLUMNS = ", ".join(f.name for f in dataclasses.fields(Row))
