"""The research loop: propose → check → trial → measure → decide → record, on K workers, until a limit, Ctrl-C or SIGTERM."""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading
import time
from collections import deque
from dataclasses import dataclass

from autoresearch import UsageError
from autoresearch.agents.base import Context, CrashToFix, Proposal, Result, Usage
from autoresearch.events import Observer
from autoresearch.failpoints import failpoint
from autoresearch.ledger import INTERRUPTED, Ledger, Row
from autoresearch.measure import Measured, Measurement
from autoresearch.orphans import identity, stop
from autoresearch.rebase import merge_onto
from autoresearch.reporter import Reporter
from autoresearch.secrets import redact
from autoresearch.slots import Slot
from autoresearch.strategies import Greedy, Strategy
from autoresearch.trial import Trial, Trials
from autoresearch.workers import Pool
from autoresearch.workspace import Workspace

MAX_FIX_ATTEMPTS = 2
MAX_REBASES = 2  # times one idea is re-based onto a newer best before it is recorded against its own parent
MAX_IDLE_PROPOSALS = 50  # proposals in a row that led to no run (none, duplicate, rejected) before giving up
MAX_AGENT_ERRORS = 5  # proposals in a row that failed with an agent error (bad key, dead endpoint) before giving up
LINEAGE_SHOWN = 20  # nodes of the parent's lineage the agent is shown


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


@dataclass
class Job:
    """One candidate on its way: its proposal, the node it edits, and where it came from (a fix, a re-base)."""

    proposal: Proposal
    parent: Row  # the measured node whose commit it edits: the best, or (tree) another node
    node_parent: int  # its parent in the search tree: `parent`'s row, or the crashed row it fixes
    attempt: int = 0  # 0 for a new idea, 1..2 for fixes of a crash
    propose_seconds: float = 0.0
    started_at: float = 0.0
    rebased_from: int | None = None  # the row whose change this re-bases onto a newer best
    rebases: int = 0
    row: int = 0
    trial: Trial | None = None
    net_lines: int = 0
    sigma: float = 0.0


@dataclass
class Asked:
    """A proposal asked of the agent: for which parent and request, and what came back."""

    parent: Row
    request: "Request | None"
    context: Context
    t0: float
    started_at: float
    proposal: Proposal | None = None
    error: str | None = None
    note: str = ""
    seconds: float = 0.0
    failure: Exception | None = None


@dataclass
class Request:
    """Work for the next idle worker before any fresh idea: a crash to fix (the agent is asked) or a re-base."""

    parent: Row
    node_parent: int
    fix: CrashToFix | None = None
    job: Job | None = None  # a re-base: ready to run, nobody is asked


class Loop:
    """One tag's research loop. The user's checkout is never touched: each candidate is a trial in its own
    worktree, and the branch autoresearch/<tag> moves to the best by compare-and-swap. With K slots, K trials run
    at once while the agent proposes for idle ones; results are decided one at a time as they finish (`settle`)."""

    def __init__(self, ws: Workspace, ledger: Ledger, agent, measurement: Measurement, settings: Settings,
                 reporter: Reporter | None = None, strategy: Strategy | None = None, slots: list[Slot] | None = None,
                 events: Observer | None = None):
        self.ws, self.ledger, self.agent, self.measurement, self.s = ws, ledger, agent, measurement, settings
        self.runner = measurement.runner
        self.reporter = reporter or Reporter()
        self.events = events or Observer()  # a live view, a tracker (events.Observers fans out to several)
        self.strategy = strategy or Greedy()
        self.pool = Pool(slots or [Slot()])
        self.trials = Trials(ws, ledger.tag)
        self.waiting: deque[Request] = deque()
        self.billed = Usage()  # the part of agent.spent already written to the journal
        self.unbilled_seconds = 0.0  # agent time of proposals that got no row (none made, duplicates): billed to the next
        self.last_row: int | None = None
        self.best_metric: float | None = None  # what the tree's runs compare with while they run (set as rows settle)
        self.done = self.idle = self.errors = 0
        self.owner = threading.get_ident()  # the loop's thread: the journal connection is its own
        # several proposals at once, each in a thread: only for agents that say they can be asked so (LLM APIs)
        self.concurrent = len(self.pool.slots) > 1 and getattr(agent, "concurrent_proposals", False)
        self.local = threading.local()

    def run(self) -> None:
        """Recover, baseline if needed, finish what a kill cut off, then experiments until a limit."""
        self.recover()
        rows = self.ledger.rows()
        self.last_row = rows[-1].id if rows else None  # on a resume, what the agent spends before its first row goes here
        started = time.monotonic()
        try:
            if self.ledger.best() is None:
                self.baseline()
            self.finish_cut_off()
            self.best_metric = self.ledger.best().metric
            while True:  # fixes and re-bases waiting still start after a limit; a halt only lets runs under way end
                more = not self._halted() and bool(self.waiting or not self._limit_reached(self.done + self.pool.busy, started))
                if not more and not self.pool.busy:
                    break
                if more and self.pool.idle and (self.waiting or self.strategy.ready(self.pool.busy, len(self.pool.slots))):
                    self.launch()
                else:
                    self.pool.wait(1.0)
                self.settle_finished()
        except BaseException as exc:  # an interrupt, or an error: the runs under way end before recovery closes them
            if isinstance(exc, KeyboardInterrupt):
                self.reporter.say("Interrupted: recording the experiment(s) under way and cleaning up.")
            self.pool.cancel()
            raise
        finally:
            if self.last_row is not None:  # spend after the last experiment (e.g. a reply that did not parse)
                self.ledger.bill(self.last_row, self._unbilled())
                self._bill_seconds(self.last_row)
            self.recover()

    def launch(self) -> None:
        """Start the next job on an idle worker: a re-base waiting, else a proposal (a fix waiting, or a fresh idea
        from the strategy's parent). An agent that can be asked concurrently is asked in a thread of its own, on a
        reserved slot, so that K workers are fed by K proposals at once."""
        request = self.waiting.popleft() if self.waiting else None
        if request is not None and request.job is not None:
            self._begin(request.job)
            return
        parent = request.parent if request else self.strategy.parent(self.ledger)
        asked = Asked(parent, request, self.context(parent, request.fix if request else None), time.monotonic(), time.time())
        if not self.concurrent:
            self.proposed(self._ask(asked), None)
            return
        slot = self.pool.reserve()
        threading.Thread(target=self._ask, args=(asked, slot), name=f"autoresearch-propose-{slot.index}", daemon=True).start()

    def _ask(self, asked: "Asked", slot: Slot | None = None) -> "Asked":
        """Ask the agent, here or in a thread of its own; its error and note are read in the same thread."""
        self.events.proposing(True, getattr(self.agent, "spent", Usage()).cost_usd)
        try:
            asked.proposal = self.agent.propose(asked.context)
        except Exception as exc:  # handed to the loop's thread, which raises it there
            if slot is None:
                raise
            asked.failure = exc
        finally:
            self.events.proposing(False, getattr(self.agent, "spent", Usage()).cost_usd)
        asked.error, asked.note = getattr(self.agent, "last_error", None), getattr(self.agent, "last_note", "")
        asked.seconds = time.monotonic() - asked.t0
        if slot is not None:
            self.pool.post((asked, slot))
        return asked

    def proposed(self, asked: "Asked", slot: Slot | None) -> None:
        """A proposal came back: start it (on its reserved slot), or count one that led to nothing."""
        if asked.note:
            self.reporter.say(f"  note: {asked.note}")
        if asked.failure is not None or asked.proposal is None:
            if slot is not None:
                self.pool.release(slot)
            if asked.failure is not None:
                raise asked.failure
            self.unbilled_seconds += asked.seconds
            self.reporter.say(f"  no proposal from {self.agent.name}" + (f": {asked.error}" if asked.error else ""))
            self.idle, self.errors = self.idle + 1, self.errors + 1 if asked.error else 0
            return
        request = asked.request
        self._begin(Job(asked.proposal, asked.parent, request.node_parent if request else asked.parent.id,
                        request.fix.attempt if request and request.fix else 0, asked.seconds, asked.started_at), slot)

    def _begin(self, job: Job, slot: Slot | None = None) -> None:
        result = self.start(job, slot)
        if result is None:
            self.idle = self.errors = 0
            return
        if slot is not None:
            self.pool.release(slot)
        self.idle, self.errors = self.idle + 1, 0
        self.agent.observe(result)

    def start(self, job: Job, slot: Slot | None = None) -> Result | None:
        """Check the proposal and make its trial (worktree, commit, ref), then hand it to a worker. A refused or
        duplicate proposal is recorded (or skipped) here and its Result returned; None once it is running."""
        parent, description = job.parent.commit_sha, job.proposal.description
        try:
            if job.proposal.refused:
                raise ValueError(job.proposal.refused)
            self.ws.check_editable(job.proposal.files)
        except ValueError as exc:  # a locked or foreign file, or what the agent did to git: refused, never run
            row = self._open_row(job, None, None, slot)
            self.ledger.finish(row, "invalid", f"edit refused: {exc}")
            self.reporter.say(f"  invalid   {description}: {exc}")
            self._recorded(row)
            return Result(description, "invalid", None, str(exc), {"files": job.proposal.files})
        digest = self.ws.editable_hash_at(parent, job.proposal.files)
        if digest == self.ws.editable_hash_at(parent) or (job.rebased_from is None and digest in self.ledger.measured_hashes(running=True)):
            self.reporter.say(f"  skipped   {description}: already measured")
            self.unbilled_seconds += job.propose_seconds
            return Result(description, "duplicate", None, "this exact code was already measured", {"files": job.proposal.files})
        job.row = self._open_row(job, digest, self.s.seed, slot)
        job.trial = self.trials.open(job.row, parent, job.proposal.files, description)
        failpoint("commit")
        self.ledger.set_commit(job.row, job.trial.commit, job.trial.ref, self.ws.diff(parent, job.trial.commit))
        job.net_lines, job.sigma = self.ws.net_added_lines(parent, job.trial.commit), self.ledger.noise_sigma() or 0.0
        self._announce(job.row, description, 1, slot)
        self.pool.submit(self.work, job, slot)
        return None

    def work(self, job: Job, slot: Slot) -> Measured:
        """A worker's part: measure the trial (train, evaluate, screen, seeds). Greedy and parallel runs are judged
        against their parent (the best when proposed); the tree's against the best as it stands while they run."""
        best = job.parent.metric if self.strategy.rebase else (lambda: self.best_metric)
        return self.run_trial(job.trial, self.seeds(self.s.seeds), best, job.sigma, job.net_lines, slot)

    def settle_finished(self) -> None:
        """Start what proposals came back, then decide what finished, one at a time."""
        for asked, slot in self.pool.take_posted():
            self.proposed(asked, slot)
        for done in self.pool.take():
            self.settle(done.job, done.value)

    def settle(self, job: Job, m: Measured) -> None:
        """Decide and record a finished candidate, one at a time (see `stale` for a parent that is no longer the
        best), tell the agent, and send a crash back to be fixed."""
        best = self.ledger.best()
        if m.status == "keep" and job.parent.commit_sha != best.commit_sha:
            m = self.stale(job, m, best)
        result = self.record(job.trial, job.proposal.description, m)
        self.done += 1
        self.agent.observe(result)
        if result.status in ("crash", "timeout") and job.attempt < MAX_FIX_ATTEMPTS:
            fix = CrashToFix(job.proposal.description, job.proposal.files, result.extra.get("log_tail", ""), job.attempt + 1)
            self.waiting.append(Request(job.parent, job.row, fix=fix))

    def stale(self, job: Job, m: Measured, best: Row) -> Measured:
        """A candidate kept against a parent that is no longer the best (another keep finished first). The tree
        decides it against the best as it is now. Greedy and parallel never keep it as it is, which would drop
        the keep made meanwhile: its change is merged onto the best (conflicting hunks taken from it) and that
        is measured as a new trial, unless the best already holds the change, or the merge is the candidate itself
        and its own measurement does not beat the best, or it was re-based twice already."""
        decider, k = self.measurement.decider, f"#{best.id}"
        against = decider.decide(m.values, best.metric, self.s.maximize, self.ledger.noise_sigma() or 0.0, job.net_lines)
        if not self.strategy.rebase:
            return dataclasses.replace(m, status="keep" if against.keep else "discard",
                                       reason=f"against the best {k} (kept while it ran): {against.reason}")
        why = f"it beat its parent #{job.parent.id} ({m.reason}), but {k} was kept while it ran"
        files, conflicts = merge_onto(self.ws, job.parent.commit_sha, best.commit_sha, job.trial.commit)
        if not files:
            return dataclasses.replace(m, status="discard", reason=f"{why}, and already holds its change")
        merged = {**self.ws.read_editable_at(best.commit_sha), **files}
        if merged == self.ws.read_editable_at(job.trial.commit) and not against.keep:
            return dataclasses.replace(m, status="discard", reason=f"{why}; its change replaces all of {k}'s, and "
                                       f"against {k}: {against.reason}")
        if job.rebases >= MAX_REBASES:
            return dataclasses.replace(m, status="discard", reason=f"{why}; re-based {job.rebases} times already, "
                                       "so it is recorded against its own parent")
        rebased = Job(Proposal(f"{job.proposal.description} (re-based onto {k})", files), best, best.id, job.attempt,
                      started_at=time.time(), rebased_from=job.row, rebases=job.rebases + 1)
        self.waiting.appendleft(Request(best, best.id, job=rebased))
        taken = f", {conflicts} conflicting hunk(s) taken from it" if conflicts else ""
        return dataclasses.replace(m, status="discard", reason=f"{why}: re-based onto {k}{taken}, to be measured again")

    def run_trial(self, trial: Trial, seeds: list[int], best, sigma: float, net_lines: int, slot: Slot) -> Measured:
        """Measure a trial on a slot; every process it starts is journaled (by this thread's connection)."""
        row, journal = trial.id, self.journal()

        def on_process(pid, kind, log=None):
            journal.add_process(row, pid, identity(pid), str(log) if log else None)
            self.events.process_started(row, kind, log)
            failpoint(kind)  # the kill-safety tests stop the harness while this process runs

        tick = self.pool.tick_guard(self.reporter.ticker(f"#{row}", lambda: journal.beat(row)))
        return self.measurement(trial, seeds, best, sigma, net_lines, on_process=on_process, on_tick=tick, env=slot.env)

    def record(self, trial: Trial, description: str, m: Measured, baseline: bool = False) -> Result:
        """Record a measured trial, end the trial, move the branch on a keep, then score a keep's test split."""
        row = trial.id
        keep = m.status == "keep"
        test_state = "pending" if keep and self.runner.spec.test_command else None
        reason, log_tail = redact(m.reason), redact(m.log_tail)  # no key or token reaches the journal or a prompt
        self.ledger.finish(row, m.status, reason, m.metric, m.summary(), m.wall_seconds, "" if keep else log_tail,
                           m.values, m.seeds, test_state)  # every non-keep carries its log tail
        failpoint("recorded")
        self.trials.close(row, keep_models=keep)
        self.sync_branch()
        best = self.ledger.best()
        self.best_metric = best.metric if best else None
        shown = f"{m.metric:.6f}" if m.metric is not None else "-"
        label = description if self.pool.inline else f"#{row} {description}"
        self.reporter.say(f"  {m.status:<9} {shown:>10}  {label}" + ("" if keep and not baseline else f"  ({reason})"))
        if test_state:  # the worktree is gone: the evaluator's copy of the commit comes from the repository
            self.score_test(row, dataclasses.replace(trial, tree=self.ws), m.seeds, m.artifacts)
        self._recorded(row)
        return Result(description, m.status, m.metric, reason, {"ran": True, "log_tail": log_tail, "values": m.values,
                      "log": str(trial.run_dir / "run.log"), "summary": m.runs[0].out.summary if m.runs else {},
                      "files": self.ws.read_editable_at(trial.commit)})

    def measure(self, trial: Trial, description: str, best: Row | None, seeds: list[int], net_lines: int = 0) -> Result:
        """Measure and record a trial here and now, on the first slot (a baseline, a re-measurement)."""
        self._announce(trial.id, description, len(seeds) if best is None else 1)
        m = self.run_trial(trial, seeds, best.metric if best else None, self.ledger.noise_sigma() or 0.0, net_lines,
                           self.pool.slots[0])
        return self.record(trial, description, m, baseline=best is None)

    def _announce(self, row: int, description: str, runs: int, slot: Slot | None = None) -> None:
        slot = slot or (self.pool.free[0] if self.pool.free else None)
        where = f" on worker {slot.index} ({slot.label})" if slot is not None and not self.pool.inline else ""
        self.reporter.say(f"#{row} {description}: {runs}+ run(s) of {self.runner.spec.budget_seconds:g}s{where}")
        self.events.experiment_started(row, description, self.runner.spec.budget_seconds, slot.index if slot else 0,
                                       slot.label if slot else "")

    def _recorded(self, row: int) -> None:
        """Tell the watchers a row is finished, as the journal now holds it."""
        found = self.ledger.where("id = ?", (row,))
        if found:
            self.events.experiment_recorded(found[0])

    def baseline(self, description: str = "baseline", seed_offset: int = 0) -> None:
        """Run the starting commit once per baseline seed: its mean is the first best, its spread the first σ."""
        best = self.ledger.best()
        start = best.commit_sha if best else self.ws.resolve(f"refs/heads/{self.ledger.branch}")
        row = self._start(start, start, description, "baseline", "", self.ws.editable_hash_at(start), self.s.seed + seed_offset,
                          parent_id=best.id if best else None)
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
                              self.s.seed, cut.attempt, retry_of=cut.id, parent_id=cut.parent_id)
            trial = self.trials.reopen(row, cut.parent_commit, cut.commit_sha)
            self.ledger.set_commit(row, cut.commit_sha, trial.ref, cut.diff)
            self.reporter.say(f"Measuring #{cut.id} again, which a kill cut off:")
            best = self.ledger.best()
            if cut.parent_commit != best.commit_sha:  # its parent is no longer the best: judged against the best
                self.reporter.say(f"  (its parent is no longer the best: it is judged against #{best.id})")
            result = self.measure(trial, cut.description, best, self.seeds(self.s.seeds),
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
            self._recorded(row.id)
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

    def context(self, parent: Row | None, fix: CrashToFix | None = None) -> Context:
        """What the agent sees: the parent node's files (the best, or the tree's choice), its lineage, the history."""
        done = self.ledger.history()
        history = [{"commit": (r["commit_sha"] or "-")[:7], "metric": r["metric"], "status": r["status"],
                    "description": r["description"], "reason": r["reason"]} for r in done]
        kept = [{"description": r["description"], "diff": r["diff"], "metric": r["metric"]} for r in done if r["diff"]]
        failures = [{"description": r["description"], "status": r["status"], "reason": r["reason"], "metric": r["metric"]}
                    for r in done if r["status"] != "keep"][-self.s.history_limit:]
        best = self.ledger.best()
        parent_commit = parent.commit_sha if parent else self.ws.resolve(f"refs/heads/{self.ledger.branch}")
        lineage = [{"id": r.id, "commit": (r.commit_sha or "-")[:7], "metric": r.metric, "status": r.status,
                    "description": r.description} for r in self.ledger.lineage(parent)[-LINEAGE_SHOWN:]] if parent else []
        return Context(self.s.program, self.ws.read_editable_at(parent_commit), self.ws.read_locked_at(parent_commit), history,
                       self.s.metric, self.s.maximize, best.metric if best else None, self.s.device, fix=fix, kept_diffs=kept,
                       recent_failures=failures, noise_floor=self.ledger.noise_sigma(), editable=list(self.ws.editable),
                       workspace=str(self.ws.root), parent_commit=parent_commit, lineage=lineage,
                       parent_is_best=bool(parent and best and parent.commit_sha == best.commit_sha))

    def journal(self) -> Ledger:
        """The journal as this thread may use it: the loop's own connection, or a worker thread's own."""
        if threading.get_ident() == self.owner:
            return self.ledger
        here = getattr(self.local, "ledger", None)
        if here is None:
            here = self.local.ledger = self.ledger.reopen()
        return here

    def seeds(self, n: int, offset: int = 0) -> list[int]:
        return [self.s.seed + offset + i for i in range(n)]

    def _unbilled(self) -> Usage:
        spent = getattr(self.agent, "spent", Usage())
        delta = Usage(spent.input_tokens - self.billed.input_tokens, spent.output_tokens - self.billed.output_tokens,
                      spent.cost_usd - self.billed.cost_usd, spent.calls - self.billed.calls)
        self.billed = Usage(spent.input_tokens, spent.output_tokens, spent.cost_usd, spent.calls)
        return delta

    def _open_row(self, job: Job, digest: str | None, seed: int | None, slot: Slot | None = None) -> int:
        agent = self.agent.name if job.rebased_from is None else f"{self.agent.name} (re-based)"
        return self._start(job.parent.commit_sha, None, job.proposal.description, agent, "", digest, seed, job.attempt,
                           job.propose_seconds, job.started_at, parent_id=job.node_parent, rebased_from=job.rebased_from,
                           worker=slot.index if slot else self.pool.free[0].index if self.pool.free else 0)

    def _start(self, *args, **kwargs) -> int:
        """Open a journal row and bill it what the agent spent since the last one, time included."""
        row = self.ledger.start(*args, strategy=self.strategy.name, **kwargs)
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

    def _halted(self) -> bool:
        """Whether to start nothing more: data a run changed, or an agent that keeps failing."""
        if self.runner.tampered:  # every later number would be measured on altered data
            self.reporter.once("tampered", f"Stopping: a run changed held-out or evaluation data ({', '.join(self.runner.tampered[:3])}). "
                               "Delete it, run `autoresearch prepare`, then `autoresearch run` again.")
            return True
        if self.idle >= MAX_IDLE_PROPOSALS or self.errors >= MAX_AGENT_ERRORS:
            self.reporter.once("idle", f"The agent made {self.idle} proposals in a row that could not run; stopping.")
            return True
        return False

    def _limit_reached(self, done: int, started: float) -> bool:
        if self.s.max_experiments is not None and done >= self.s.max_experiments:
            return True
        if self.s.max_cost is not None:
            spent = self.ledger.total_cost() + getattr(self.agent, "spent", Usage()).cost_usd - self.billed.cost_usd
            if spent >= self.s.max_cost:
                self.reporter.once("max-cost", f"Estimated agent spend ${spent:.4f} reached the cap of ${self.s.max_cost:.4f}; stopping.")
                return True
        return self.s.max_hours is not None and time.monotonic() - started >= self.s.max_hours * 3600
