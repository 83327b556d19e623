"""The research loop: propose → check → trial → measure → decide → record, until a limit, Ctrl-C or SIGTERM."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass

from autoresearch import UsageError
from autoresearch.agents.base import Context, CrashToFix, Proposal, Result, Usage
from autoresearch.failpoints import failpoint
from autoresearch.ledger import INTERRUPTED, Ledger, Row
from autoresearch.measure import Measured, Measurement
from autoresearch.orphans import identity, stop
from autoresearch.reporter import Reporter
from autoresearch.secrets import redact
from autoresearch.trial import Trial, Trials
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
    seeds: int = 1  # runs per candidate that passes its first run
    baseline_seeds: int = 1  # runs of a baseline: more than a screen, for the first noise estimate
    history_limit: int = 50  # recent discarded or crashed ideas shown to the agent


class Loop:
    """One tag's research loop. The user's checkout is never touched: each candidate is a trial in its own
    worktree, and the branch autoresearch/<tag> moves to the best by compare-and-swap."""

    def __init__(self, ws: Workspace, ledger: Ledger, agent, measurement: Measurement, settings: Settings,
                 reporter: Reporter | None = None):
        self.ws, self.ledger, self.agent, self.measurement, self.s = ws, ledger, agent, measurement, settings
        self.runner = measurement.runner
        self.reporter = reporter or Reporter()
        self.trials = Trials(ws, ledger.tag)
        self.billed = Usage()  # the part of agent.spent already written to the journal
        self.unbilled_seconds = 0.0  # agent time of proposals that got no row (none made, duplicates): billed to the next
        self.last_row: int | None = None

    def run(self) -> None:
        """Recover, baseline if needed, finish what a kill cut off, then experiments until a limit."""
        self.recover()
        rows = self.ledger.rows()
        self.last_row = rows[-1].id if rows else None  # on a resume, what the agent spends before its first row goes here
        started, done, idle, errors = time.monotonic(), 0, 0, 0
        try:
            if self.ledger.best() is None:
                self.baseline()
            self.finish_cut_off()
            while not self._limit_reached(done, started):
                ran = self.step()
                done, idle = done + ran, 0 if ran else idle + 1
                errors = 0 if ran or not getattr(self.agent, "last_error", None) else errors + 1
                if idle >= MAX_IDLE_PROPOSALS or errors >= MAX_AGENT_ERRORS:
                    self.reporter.say(f"The agent made {idle} proposals in a row that could not run; stopping.")
                    break
                if self.runner.tampered:  # every later number would be measured on altered data
                    self.reporter.say(f"Stopping: a run changed held-out or evaluation data ({', '.join(self.runner.tampered[:3])}). "
                                      "Delete it, run `autoresearch prepare`, then `autoresearch run` again.")
                    break
        except KeyboardInterrupt:
            self.reporter.say("Interrupted: recording the experiment under way and cleaning up.")
            raise
        finally:
            if self.last_row is not None:  # spend after the last experiment (e.g. a reply that did not parse)
                self.ledger.bill(self.last_row, self._unbilled())
                self._bill_seconds(self.last_row)
            self.recover()

    def step(self) -> int:
        """One idea: propose, run, and let the agent fix a crash up to twice. Returns the number of runs."""
        best = self.ledger.best()
        context = self.context(best)
        t0, started_at = time.monotonic(), time.time()
        proposal = self._propose(context)
        runs = 0
        for attempt in range(MAX_FIX_ATTEMPTS + 1):
            if proposal is None:
                self.unbilled_seconds += time.monotonic() - t0
                why = getattr(self.agent, "last_error", None)
                self.reporter.say(f"  no proposal from {self.agent.name}" + (f": {why}" if why else ""))
                break
            result = self.try_candidate(proposal, best, attempt, time.monotonic() - t0, started_at)
            self.agent.observe(result)
            runs += 1 if result.extra.get("ran") else 0
            if result.status not in ("crash", "timeout") or attempt == MAX_FIX_ATTEMPTS:
                break
            fix = CrashToFix(proposal.description, proposal.files, result.extra.get("log_tail", ""), attempt + 1)
            context = dataclasses.replace(context, fix=fix)
            t0, started_at = time.monotonic(), time.time()
            proposal = self._propose(context)
        return runs

    def _propose(self, context: Context) -> Proposal | None:
        """The agent's proposal; what it says it left behind (files in the checkout) is passed on."""
        proposal = self.agent.propose(context)
        note = getattr(self.agent, "last_note", "")
        if note:
            self.reporter.say(f"  note: {note}")
        return proposal

    def try_candidate(self, proposal: Proposal, best: Row, attempt: int, propose_seconds: float, started_at: float) -> Result:
        """Check the proposal, make its trial (worktree, commit, ref), measure it and record it."""
        parent, description = best.commit_sha, proposal.description
        try:
            if proposal.refused:
                raise ValueError(proposal.refused)
            self.ws.check_editable(proposal.files)
        except ValueError as exc:  # a locked or foreign file, or what the agent did to git: refused, never run
            row = self._start(parent, None, description, self.agent.name, "", None, None, attempt, propose_seconds, started_at)
            self.ledger.finish(row, "invalid", f"edit refused: {exc}")
            self.reporter.say(f"  invalid   {description}: {exc}")
            return Result(description, "invalid", None, str(exc))
        digest = self.ws.editable_hash_at(parent, proposal.files)
        if digest == self.ws.editable_hash_at(parent) or digest in self.ledger.measured_hashes():
            self.reporter.say(f"  skipped   {description}: already measured")
            self.unbilled_seconds += propose_seconds
            return Result(description, "duplicate", None, "this exact code was already measured")
        row = self._start(parent, None, description, self.agent.name, "", digest, self.s.seed, attempt, propose_seconds, started_at)
        trial = self.trials.open(row, parent, proposal.files, description)
        failpoint("commit")
        self.ledger.set_commit(row, trial.commit, trial.ref, self.ws.diff(parent, trial.commit))
        return self.measure(trial, description, best, self.seeds(self.s.seeds), self.ws.net_added_lines(parent, trial.commit))

    def measure(self, trial: Trial, description: str, best: Row | None, seeds: list[int], net_lines: int = 0) -> Result:
        """Measure a trial, record it, end the trial, move the branch on a keep, then score a keep's test split."""
        row = trial.id
        self.reporter.say(f"#{row} {description}: {len(seeds) if best is None else 1}+ run(s) of {self.runner.spec.budget_seconds:g}s")

        def on_process(pid, kind, log=None):
            self.ledger.add_process(row, pid, identity(pid), str(log) if log else None)
            failpoint(kind)  # the kill-safety tests stop the harness while this process runs

        m = self.measurement(trial, seeds, best.metric if best else None, self.ledger.noise_sigma() or 0.0, net_lines,
                             on_process=on_process, on_tick=self.reporter.ticker(f"#{row}", lambda: self.ledger.beat(row)))
        keep = m.status == "keep"
        test_state = "pending" if keep and self.runner.spec.test_command else None
        reason, log_tail = redact(m.reason), redact(m.log_tail)  # no key or token reaches the journal or a prompt
        self.ledger.finish(row, m.status, reason, m.metric, m.summary(), m.wall_seconds, "" if keep else log_tail,
                           m.values, m.seeds, test_state)  # every non-keep carries its log tail
        failpoint("recorded")
        self.trials.close(row, keep_models=keep)
        self.sync_branch()
        shown = f"{m.metric:.6f}" if m.metric is not None else "-"
        self.reporter.say(f"  {m.status:<9} {shown:>10}  {description}" + ("" if keep and best is not None else f"  ({reason})"))
        if test_state:  # the worktree is gone: the evaluator's copy of the commit comes from the repository
            self.score_test(row, dataclasses.replace(trial, tree=self.ws), m.seeds, m.artifacts)
        return Result(description, m.status, m.metric, reason, {"ran": True, "log_tail": log_tail, "values": m.values,
                      "log": str(trial.run_dir / "run.log"), "summary": m.runs[0].out.summary if m.runs else {}})

    def baseline(self, description: str = "baseline", seed_offset: int = 0) -> None:
        """Run the starting commit once per baseline seed: its mean is the first best, its spread the first σ."""
        best = self.ledger.best()
        start = best.commit_sha if best else self.ws.resolve(f"refs/heads/{self.ledger.branch}")
        row = self._start(start, start, description, "baseline", "", self.ws.editable_hash_at(start), self.s.seed + seed_offset)
        trial = self.trials.reopen(row, start, start)
        self.ledger.set_commit(row, start, trial.ref, "")
        result = self.measure(trial, description, None, self.seeds(self.s.baseline_seeds, seed_offset))
        if result.status != "keep":
            raise UsageError(f"the baseline run ended '{result.status}' ({result.reason}); fix it first, see {result.extra.get('log')}")

    def remeasure(self) -> None:
        """`autoresearch baseline`: the best commit again, with fresh seeds; refreshes the best mean and σ."""
        self.recover()
        try:
            self.baseline("baseline (re-measured)" if self.ledger.best() else "baseline",
                          seed_offset=1000 * len(self.ledger.rows()))
        finally:
            self.recover()

    def finish_cut_off(self) -> None:
        """What a kill cut off: a candidate is measured again once (a row of its own, `retry_of` the cut one, its
        result told to the agent), and a keep whose hidden test split was not scored is scored now."""
        for cut in self.ledger.to_retry():
            row = self._start(cut.parent_commit, cut.commit_sha, cut.description, cut.agent, cut.diff, cut.editable_hash,
                              self.s.seed, cut.attempt, retry_of=cut.id)
            trial = self.trials.reopen(row, cut.parent_commit, cut.commit_sha)
            self.ledger.set_commit(row, cut.commit_sha, trial.ref, cut.diff)
            self.reporter.say(f"Measuring #{cut.id} again, which a kill cut off:")
            result = self.measure(trial, cut.description, self.ledger.best(), self.seeds(self.s.seeds),
                                  self.ws.net_added_lines(cut.parent_commit, cut.commit_sha))
            self.agent.observe(result)
        for kept in self.ledger.pending_tests():
            trial = Trial(kept.id, self.ledger.tag, kept.parent_commit, kept.commit_sha, self.ws, self.trials.run_dir(kept.id))
            seeds = json.loads(kept.seeds_json)
            self.score_test(kept.id, trial, seeds, [trial.run_dir / f"artifacts-seed{s}" for s in seeds])

    def score_test(self, row: int, trial: Trial, seeds: list[int], artifacts) -> None:
        """Score a kept candidate on the hidden test split (never shown to the agent) and record it."""
        def on_process(pid, kind, log=None):
            self.ledger.add_process(row, pid, identity(pid))
            failpoint(kind)

        mean, values, why = self.runner.score_test(trial, seeds, artifacts, on_process=on_process)
        self.ledger.set_test(row, mean, values, "done" if mean is not None else "failed")
        self.reporter.say(f"            hidden test split: {mean:.6f}" if mean is not None else f"            hidden test split not scored: {why}")

    def recover(self) -> None:
        """Close the rows a kill or Ctrl-C cut off (this process holds the tag's lock, so their owner is gone), stop
        every process they started, remove their worktrees and models, and point the branch at the best."""
        for row in self.ledger.pending_tests():  # a kill while a keep's test split was scored
            stop(json.loads(row.pids_json))
        for row in self.ledger.interrupted():
            stop(json.loads(row.pids_json) + ([[row.pid, ""]] if row.pid else []))
            self.ledger.finish(row.id, "crash", f"{INTERRUPTED} the harness stopped during this experiment")
            self.trials.close(row.id, keep_models=False)
        for folder in self.trials.leftovers():
            self.ws.remove_worktree(folder)
        kept, own = self.ledger.kept_ids(), self.ledger.own_ids()  # another tag may be running its own trials
        for models in self.trials.state.glob("runs/*/artifacts-seed*"):  # a kill between recording a row and its clean-up
            if models.parent.name.isdigit() and int(models.parent.name) in own - kept:
                shutil.rmtree(models, ignore_errors=True)
        self.ledger.write_results_tsv()
        self.sync_branch()

    def sync_branch(self) -> None:
        """Point autoresearch/<tag> at the best commit by compare-and-swap. A clean checkout of the branch is brought
        along (`read-tree -m -u`, which overwrites nothing); a dirty one is left as it is, and the branch waits."""
        best = self.ledger.best()
        ref = f"refs/heads/{self.ledger.branch}"
        tip = self.ws.resolve(ref)
        if best is None or tip == best.commit_sha:
            return
        if self.ws.checked_out_branch() == ref:
            if self.ws.git("status", "--porcelain", "--untracked-files=no").strip():
                self.reporter.once(f"dirty:{tip}", f"Your checkout of {self.ledger.branch} has uncommitted changes: it is left as "
                                   f"it is, and the branch stays at {tip[:7]} until it is clean (the best is {best.commit_sha[:7]}).")
                return
            try:
                self.ws.fast_forward_checkout(tip, best.commit_sha)
            except UsageError as exc:
                self.reporter.once(f"ff:{tip}", f"Your checkout of {self.ledger.branch} could not be brought to the best ({exc}); "
                                   f"the branch stays at {tip[:7]}.")
                return
        failpoint("branch")
        if not self.ws.move_ref(ref, best.commit_sha, tip):
            self.reporter.say(f"{self.ledger.branch} was moved by someone else; it is left where it is.")

    def context(self, best: Row | None) -> Context:
        done = self.ledger.history()
        history = [{"commit": (r["commit_sha"] or "-")[:7], "metric": r["metric"], "status": r["status"],
                    "description": r["description"], "reason": r["reason"]} for r in done]
        kept = [{"description": r["description"], "diff": r["diff"], "metric": r["metric"]} for r in done if r["diff"]]
        failures = [{"description": r["description"], "status": r["status"], "reason": r["reason"], "metric": r["metric"]}
                    for r in done if r["status"] != "keep"][-self.s.history_limit:]
        parent = best.commit_sha if best else self.ws.resolve(f"refs/heads/{self.ledger.branch}")
        return Context(self.s.program, self.ws.read_editable_at(parent), self.ws.read_locked_at(parent), history, self.s.metric,
                       self.s.maximize, best.metric if best else None, self.s.device, kept_diffs=kept,
                       recent_failures=failures, noise_floor=self.ledger.noise_sigma(), editable=list(self.ws.editable),
                       workspace=str(self.ws.root), parent_commit=parent)

    def seeds(self, n: int, offset: int = 0) -> list[int]:
        return [self.s.seed + offset + i for i in range(n)]

    def _unbilled(self) -> Usage:
        spent = getattr(self.agent, "spent", Usage())
        delta = Usage(spent.input_tokens - self.billed.input_tokens, spent.output_tokens - self.billed.output_tokens,
                      spent.cost_usd - self.billed.cost_usd, spent.calls - self.billed.calls)
        self.billed = Usage(spent.input_tokens, spent.output_tokens, spent.cost_usd, spent.calls)
        return delta

    def _start(self, *args, **kwargs) -> int:
        """Open a journal row and bill it what the agent spent since the last one, time included."""
        row = self.ledger.start(*args, **kwargs)
        self.ledger.bill(row, self._unbilled())
        self._bill_seconds(row)
        protection = getattr(self.runner, "protection", None)
        if protection is not None:
            self.ledger.set_protection(row, protection())
        self.last_row = row
        return row

    def _bill_seconds(self, row: int) -> None:
        if self.unbilled_seconds:
            self.ledger.add_propose_seconds(row, self.unbilled_seconds)
            self.unbilled_seconds = 0.0

    def _limit_reached(self, done: int, started: float) -> bool:
        if self.s.max_experiments is not None and done >= self.s.max_experiments:
            return True
        if self.s.max_cost is not None:
            spent = self.ledger.total_cost() + getattr(self.agent, "spent", Usage()).cost_usd - self.billed.cost_usd
            if spent >= self.s.max_cost:
                self.reporter.say(f"Estimated agent spend ${spent:.4f} reached the cap of ${self.s.max_cost:.4f}; stopping.")
                return True
        return self.s.max_hours is not None and time.monotonic() - started >= self.s.max_hours * 3600
