"""The research loop: propose → check → commit → run → decide → record, until a limit or Ctrl-C."""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

from autoresearch import UsageError
from autoresearch.agents.base import Context, CrashToFix, Proposal, Result, Usage
from autoresearch.executors.local import group_alive, kill_group
from autoresearch.ledger import STATE_DIR, Ledger
from autoresearch.workspace import Workspace

MAX_FIX_ATTEMPTS = 2
MAX_IDLE_PROPOSALS = 50  # proposals in a row that led to no run (none, duplicate, rejected) before giving up
MAX_AGENT_ERRORS = 5  # proposals in a row that failed with an agent error (bad key, dead endpoint) before giving up


@dataclass
class Settings:
    run_command: str
    program: str
    metric: str
    maximize: bool
    budget_seconds: float
    limit_seconds: float  # budget × timeout_factor + grace: the harness kills the run here
    seed: int
    device: str
    max_experiments: int | None = None
    max_hours: float | None = None
    max_cost: float | None = None  # dollars of estimated agent spend on this branch
    history_limit: int = 50  # recent discarded or crashed ideas shown to the agent


class Loop:
    def __init__(self, ws: Workspace, ledger: Ledger, agent, executor, decider, settings: Settings, echo=print):
        self.ws, self.ledger, self.agent, self.executor, self.decider, self.s = ws, ledger, agent, executor, decider, settings
        self.echo = echo
        self.locked_hash = ws.locked_hash()
        self.billed = Usage()  # the part of agent.spent already written to the journal
        self.last_row: int | None = None

    def run(self) -> None:
        """Recover, baseline if needed, then experiments until a limit; Ctrl-C leaves the branch on the best commit."""
        self.recover()
        started, done, idle, errors = time.monotonic(), 0, 0, 0
        try:
            if self.ledger.best(self.s.maximize) is None:
                self.baseline()
            while not self._limit_reached(done, started):
                ran = self.step()
                done, idle = done + ran, 0 if ran else idle + 1
                errors = 0 if ran or not getattr(self.agent, "last_error", None) else errors + 1
                if idle >= MAX_IDLE_PROPOSALS or errors >= MAX_AGENT_ERRORS:
                    self.echo(f"The agent made {idle} proposals in a row that could not run; stopping.")
                    break
        except KeyboardInterrupt:
            self.echo("Interrupted: recording and returning to the best commit.")
        finally:
            if self.last_row is not None:  # spend after the last experiment (e.g. a reply that did not parse)
                self.ledger.bill(self.last_row, self._unbilled())
            self.recover()

    def step(self) -> int:
        """One idea: propose, run, and let the agent fix a crash up to twice. Returns the number of runs."""
        best = self.ledger.best(self.s.maximize)
        context = self.context(best)
        t0, started_at = time.monotonic(), time.time()
        proposal = self.agent.propose(context)
        runs = 0
        for attempt in range(MAX_FIX_ATTEMPTS + 1):
            if proposal is None:
                why = getattr(self.agent, "last_error", None)
                self.echo(f"  no proposal from {self.agent.name}" + (f": {why}" if why else ""))
                break
            result = self.try_candidate(proposal, best, attempt, time.monotonic() - t0, started_at)
            self.agent.observe(result)
            runs += 1 if result.extra.get("ran") else 0
            if result.status not in ("crash", "timeout") or attempt == MAX_FIX_ATTEMPTS:
                break
            fix = CrashToFix(proposal.description, proposal.files, result.extra.get("log_tail", ""), attempt + 1)
            context = dataclasses.replace(context, fix=fix)
            t0, started_at = time.monotonic(), time.time()
            proposal = self.agent.propose(context)
        return runs

    def _unbilled(self) -> Usage:
        spent = getattr(self.agent, "spent", Usage())
        delta = Usage(spent.input_tokens - self.billed.input_tokens, spent.output_tokens - self.billed.output_tokens,
                      spent.cost_usd - self.billed.cost_usd, spent.calls - self.billed.calls)
        self.billed = Usage(spent.input_tokens, spent.output_tokens, spent.cost_usd, spent.calls)
        return delta

    def _start(self, *args, **kwargs) -> int:
        """Open a journal row and bill it what the agent spent since the last one."""
        row = self.ledger.start(*args, **kwargs)
        self.ledger.bill(row, self._unbilled())
        self.last_row = row
        return row

    def try_candidate(self, proposal: Proposal, best, attempt: int, propose_seconds: float, started_at: float) -> Result:
        ws, parent = self.ws, best.commit_sha
        try:
            ws.write_files(proposal.files)
        except ValueError as exc:  # a locked or foreign file: refused, never run
            ws.reset_hard(parent)
            row = self._start(parent, None, proposal.description, self.agent.name, "", None, None, attempt, propose_seconds, started_at)
            self.ledger.finish(row, "invalid", f"edit refused: {exc}")
            self.echo(f"  invalid   {proposal.description}: {exc}")
            return Result(proposal.description, "invalid", None, str(exc))
        digest = ws.editable_hash()
        if not ws.changed_paths() or digest in self.ledger.measured_hashes():
            ws.reset_hard(parent)
            self.echo(f"  skipped   {proposal.description}: already measured")
            return Result(proposal.description, "duplicate", None, "this exact code was already measured")
        sha = ws.commit_editable(proposal.description)
        row = self._start(parent, sha, proposal.description, self.agent.name, ws.diff(parent, sha), digest,
                          self.s.seed, attempt, propose_seconds, started_at)
        result = self.measure(row, proposal.description, best)
        ws.reset_hard(sha if result.status == "keep" else parent)
        return result

    def baseline(self) -> None:
        head = self.ws.head()
        row = self.ledger.start(head, head, "baseline", "baseline", "", self.ws.editable_hash(), self.s.seed)
        result = self.measure(row, "baseline", None)
        self.ws.reset_hard(head)
        if result.status != "keep":
            raise UsageError(f"the baseline run ended '{result.status}' ({result.reason}); fix it first, see {result.extra.get('log')}")

    def measure(self, row: int, description: str, best) -> Result:
        """Run the committed candidate, classify the outcome, decide, and record it."""
        log = self.ws.root / STATE_DIR / "runs" / str(row) / "run.log"
        env = {"AUTORESEARCH_TIME_BUDGET": f"{self.s.budget_seconds:g}", "AUTORESEARCH_SEED": str(self.s.seed)}
        out = self.executor.run(self.ws.root, self.s.run_command, env, self.s.limit_seconds, log,
                                on_start=lambda pid: self.ledger.set_run(row, pid, str(log)))
        if out.interrupted:
            raise KeyboardInterrupt
        metric = out.summary.get(self.s.metric)
        changed_locked = self.ws.modified_locked()
        if changed_locked or self.ws.locked_hash() != self.locked_hash:
            status, reason = "invalid", f"locked file changed during the run: {', '.join(changed_locked) or 'content hash'}"
        elif out.timed_out:
            status, reason = "timeout", f"killed after {out.wall_seconds:.0f}s (limit {self.s.limit_seconds:.0f}s)"
        elif out.returncode != 0:
            status, reason = "crash", f"exit code {out.returncode}"
        elif not isinstance(metric, float):
            status, reason = "crash", f"no '{self.s.metric}' in the summary block"
        elif not math.isfinite(metric):
            status, reason = "crash", f"{self.s.metric} is {metric}"
        elif best is None:
            status, reason = "keep", "baseline"
        else:
            decision = self.decider.decide(metric, best.metric, self.s.maximize)
            status, reason = ("keep" if decision.keep else "discard"), decision.reason
        ok = status in ("keep", "discard")
        self.ledger.finish(row, status, reason, metric if ok else None, out.summary, out.wall_seconds,
                           "" if status == "keep" else out.log_tail)  # every non-keep carries its log tail
        shown = f"{metric:.6f}" if ok else "-"
        self.echo(f"  {status:<9} {shown:>10}  {description}" + ("" if ok else f"  ({reason})"))
        return Result(description, status, metric if ok else None, reason,
                      {"ran": True, "log_tail": out.log_tail, "log": str(log), "summary": out.summary})

    def recover(self) -> None:
        """Close rows cut off by a kill or Ctrl-C as crash (interrupted), stop their runs, return to the best commit."""
        for row in self.ledger.interrupted():
            if row.pid and group_alive(row.pid):
                kill_group(row.pid)
            self.ledger.finish(row.id, "crash", "interrupted: the harness stopped during this experiment")
        self.ledger.write_results_tsv()
        best = self.ledger.best(self.s.maximize)
        if best is not None:
            self.ws.reset_hard(best.commit_sha)

    def context(self, best) -> Context:
        done = [r for r in self.ledger.rows() if r.state == "done"]
        history = [{"commit": (r.commit_sha or "-")[:7], "metric": r.metric, "status": r.status, "description": r.description,
                    "reason": r.reason} for r in done]
        kept = [{"description": r.description, "diff": r.diff, "metric": r.metric} for r in done if r.status == "keep" and r.diff]
        failures = [{"description": r.description, "status": r.status, "reason": r.reason, "metric": r.metric}
                    for r in done if r.status != "keep"][-self.s.history_limit:]
        return Context(self.s.program, self.ws.read_editable(), self.ws.read_locked(), history, self.s.metric,
                       self.s.maximize, best.metric if best else None, self.s.device, kept_diffs=kept,
                       recent_failures=failures, editable=list(self.ws.editable), workspace=str(self.ws.root))

    def _limit_reached(self, done: int, started: float) -> bool:
        if self.s.max_experiments is not None and done >= self.s.max_experiments:
            return True
        if self.s.max_cost is not None:
            spent = self.ledger.total_cost() + getattr(self.agent, "spent", Usage()).cost_usd - self.billed.cost_usd
            if spent >= self.s.max_cost:
                self.echo(f"Estimated agent spend ${spent:.4f} reached the cap of ${self.s.max_cost:.4f}; stopping.")
                return True
        return self.s.max_hours is not None and time.monotonic() - started >= self.s.max_hours * 3600
