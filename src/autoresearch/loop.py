"""The research loop: propose → check → commit → run → decide → record, until a limit or Ctrl-C."""

from __future__ import annotations

import dataclasses
import math
import shutil
import time
from pathlib import Path
from dataclasses import dataclass

from autoresearch import UsageError
from autoresearch.agents.base import Context, CrashToFix, Proposal, Result, Usage
from autoresearch.executors.local import group_alive, kill_group
from autoresearch.ledger import STATE_DIR, Ledger
from autoresearch.runner import Runner
from autoresearch.workspace import Workspace

MAX_FIX_ATTEMPTS = 2
MAX_IDLE_PROPOSALS = 50  # proposals in a row that led to no run (none, duplicate, rejected) before giving up
MAX_AGENT_ERRORS = 5  # proposals in a row that failed with an agent error (bad key, dead endpoint) before giving up


@dataclass
class Settings:
    program: str
    metric: str
    maximize: bool
    seed: int
    device: str
    max_experiments: int | None = None
    max_hours: float | None = None
    max_cost: float | None = None  # dollars of estimated agent spend on this branch
    seeds: int = 1  # runs per measurement (baseline; a candidate that passes its first run)
    history_limit: int = 50  # recent discarded or crashed ideas shown to the agent


def net_added_lines(diff: str) -> int:
    """Lines added minus lines removed in a unified diff."""
    lines = diff.splitlines()
    added = sum(1 for line in lines if line.startswith("+") and not line.startswith("+++"))
    removed = sum(1 for line in lines if line.startswith("-") and not line.startswith("---"))
    return added - removed


class Loop:
    """One branch's research loop: baseline, then propose → check → commit → run → decide → record."""

    def __init__(self, ws: Workspace, ledger: Ledger, agent, runner: Runner, decider, settings: Settings, echo=print):
        self.ws, self.ledger, self.agent, self.runner, self.decider, self.s = ws, ledger, agent, runner, decider, settings
        self.echo = echo
        self.billed = Usage()  # the part of agent.spent already written to the journal
        self.last_row: int | None = None

    def run(self) -> None:
        """Recover, baseline if needed, then experiments until a limit; Ctrl-C leaves the branch on the best commit."""
        self.recover()
        started, done, idle, errors = time.monotonic(), 0, 0, 0
        try:
            if self.ledger.best() is None:
                self.baseline()
            while not self._limit_reached(done, started):
                ran = self.step()
                done, idle = done + ran, 0 if ran else idle + 1
                errors = 0 if ran or not getattr(self.agent, "last_error", None) else errors + 1
                if idle >= MAX_IDLE_PROPOSALS or errors >= MAX_AGENT_ERRORS:
                    self.echo(f"The agent made {idle} proposals in a row that could not run; stopping.")
                    break
                if self.runner.tampered:  # every later number would be measured on altered data
                    self.echo(f"Stopping: a run changed held-out or evaluation data ({', '.join(self.runner.tampered[:3])}). "
                              "Delete it, run `autoresearch prepare`, then `autoresearch run` again.")
                    break
        except KeyboardInterrupt:
            self.echo("Interrupted: recording and returning to the best commit.")
        finally:
            if self.last_row is not None:  # spend after the last experiment (e.g. a reply that did not parse)
                self.ledger.bill(self.last_row, self._unbilled())
            self.recover()

    def step(self) -> int:
        """One idea: propose, run, and let the agent fix a crash up to twice. Returns the number of runs."""
        best = self.ledger.best()
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
        diff = ws.diff(parent, sha)
        row = self._start(parent, sha, proposal.description, self.agent.name, diff, digest, self.s.seed, attempt,
                          propose_seconds, started_at)
        result = self.measure(row, proposal.description, best, net_lines=net_added_lines(diff))
        ws.reset_hard(sha if result.status == "keep" else parent)
        return result

    def remeasure(self) -> None:
        """`autoresearch baseline`: run the best commit again once per seed, with fresh seeds; refreshes the best
        mean and adds to the noise floor."""
        self.recover()
        try:
            self.baseline("baseline (re-measured)", seed_offset=1000 * len(self.ledger.rows()))
        finally:
            self.recover()

    def baseline(self, description: str = "baseline", seed_offset: int = 0) -> None:
        """Run the starting commit once per seed: its mean is the first best, its spread the first noise floor."""
        head = self.ws.head()
        row = self._start(head, head, description, "baseline", "", self.ws.editable_hash(), self.s.seed + seed_offset)
        result = self.measure(row, description, None, seed_offset)
        self.ws.reset_hard(head)
        if result.status != "keep":
            raise UsageError(f"the baseline run ended '{result.status}' ({result.reason}); fix it first, see {result.extra.get('log')}")

    def measure(self, row: int, description: str, best, seed_offset: int = 0, net_lines: int = 0) -> Result:
        """Run the committed candidate: a first run, then (for the baseline, or a candidate that passes the screen)
        more runs with fresh seeds; decide on the mean against the noise, score a keep on the hidden test split,
        and record it."""
        run_dir = self.ws.root / STATE_DIR / "runs" / str(row)
        seeds = [self.s.seed + seed_offset + i for i in range(self.s.seeds)]
        sigma = self.ledger.noise_sigma() or 0.0
        values, runs, wall, training = [], [], 0.0, 0.0
        status, reason = None, ""
        for i, seed in enumerate(seeds):
            log = run_dir / ("run.log" if i == 0 else f"run-seed{seed}.log")
            run = self.runner.train(seed, log, on_start=lambda pid, log=log: self.ledger.set_run(row, pid, str(log)))
            runs.append(run)
            wall += run.out.wall_seconds
            seconds = run.out.summary.get("training_seconds")
            training += seconds if isinstance(seconds, float) and math.isfinite(seconds) else 0.0
            if run.failure:
                status, reason = run.failure, run.reason if i == 0 else f"run with seed {seed}: {run.reason}"
                break
            values.append(run.metric)
            if i == 0 and best is not None:
                screen = self.decider.decide(run.metric, best.metric, self.s.maximize, sigma, net_lines)
                if not screen.keep:
                    status, reason = "discard", screen.reason
                    break
        mean = sum(values) / len(values) if values else None
        ignored = self.runner.seed_ignored([r.artifacts for r in runs]) if status is None and len(values) > 1 else ""
        if status is None and not ignored and len(values) > 1 and len(set(values)) == 1 and sigma > 0:
            ignored = f"{len(values)} runs with different AUTORESEARCH_SEED gave identical results: the seed is ignored"
        if ignored:
            status, reason = "invalid", ignored
        elif status is None and best is None:
            status, reason = "keep", "baseline" + (f" over {len(values)} seeds" if len(values) > 1 else "")
        elif status is None:
            decision = self.decider.decide(mean, best.metric, self.s.maximize, sigma, net_lines)
            status, reason = ("keep" if decision.keep else "discard"), f"mean of {len(values)} seeds: {decision.reason}"
        ok, out = status in ("keep", "discard"), runs[-1].out
        metric = mean if ok else None
        summary = {**runs[0].out.summary, "all_runs_training_seconds": training,  # the first run's block, plus totals
                   "all_runs_evaluation_seconds": sum(r.evaluation_seconds for r in runs)}
        self.ledger.finish(row, status, reason, metric, summary, wall, "" if status == "keep" else out.log_tail,
                           values, seeds[:len(values)])  # every non-keep carries its log tail
        shown = f"{metric:.6f}" if ok else "-"
        self.echo(f"  {status:<9} {shown:>10}  {description}" + ("" if status == "keep" and best is not None else f"  ({reason})"))
        if status == "keep" and self.runner.spec.test_command:
            self.score_test(row, seeds[:len(values)], [r.artifacts for r in runs])
        if status != "keep":  # a model that was not kept is not needed again; a kept one can be re-scored
            for r in runs:
                shutil.rmtree(r.artifacts, ignore_errors=True)
        return Result(description, status, metric, reason, {"ran": True, "log_tail": out.log_tail, "log": str(run_dir / "run.log"),
                                                            "summary": runs[0].out.summary, "values": values})

    def score_test(self, row: int, seeds: list[int], artifacts: list[Path]) -> None:
        """Score a kept candidate on the hidden test split (never shown to the agent) and record it."""
        mean, values, why = self.runner.score_test(seeds, artifacts)
        self.ledger.set_test(row, mean, values)
        self.echo(f"            hidden test split: {mean:.6f}" if mean is not None else f"            hidden test split not scored: {why}")

    def recover(self) -> None:
        """Close rows cut off by a kill or Ctrl-C as crash (interrupted), stop their runs, return to the best commit."""
        for row in self.ledger.interrupted():
            if row.pid and group_alive(row.pid):
                kill_group(row.pid)
            self.ledger.finish(row.id, "crash", "interrupted: the harness stopped during this experiment")
        self.ledger.write_results_tsv()
        best = self.ledger.best()
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
