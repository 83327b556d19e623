"""The report's numbers: pure functions of journal rows (no I/O), shared by the plot, report.md and report.html."""

from __future__ import annotations

from dataclasses import dataclass, field

from autoresearch.status import flag_test_disagreements, node_parents, stats

FAILED = ("crash", "timeout")  # the run broke; `invalid` (a check refused the result) is counted on its own


def shown_status(row) -> str:
    """What a row is: its status once done, else 'running' (a row under way, or one a kill left open)."""
    return row.status if row.state == "done" and row.status else "running"


def one_line(text: str, limit: int | None = None) -> str:
    """Journal text on one line, shortened to `limit` characters with an ellipsis."""
    text = " ".join((text or "").split())
    return text if limit is None or len(text) <= limit else text[: max(1, limit - 1)].rstrip() + "…"


def last_log_line(row) -> str:
    """The last non-empty line of a row's log tail (where a crash usually says what broke)."""
    lines = [line.strip() for line in (row.log_tail or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


@dataclass
class Experiment:
    """A journal row as the report shows it: its node parent and its change against the parent's metric."""
    row: object
    status: str
    parent: int | None  # the parent node's id (status.node_parents), None for a root
    reference: float | None  # the metric it is compared with: the nearest measured ancestor's
    delta: float | None  # metric - reference
    gain: float | None  # delta in the metric's direction: positive is better


@dataclass
class KeptChange:
    """A keep, in journal order, against the best before it (the running best of the keeps, as plotted)."""
    row: object
    previous_best: float | None
    delta: float | None
    gain: float | None


@dataclass
class Summary:
    metric_name: str
    maximize: bool
    branch: str
    finished: int
    running: int
    candidates: int  # finished rows other than the first baseline (as `autoresearch status` counts them)
    kept: int
    keep_rate: float
    failed: int  # crash or timeout
    failed_rate: float
    invalid: int
    per_hour: float
    baseline: object | None  # the first kept row of the current segment (the baseline)
    best: object | None  # Ledger.best()
    delta: float | None  # best - baseline
    delta_pct: float | None  # delta / |baseline|, in percent
    gain: float | None  # delta in the metric's direction: positive is better
    sigma: float | None
    time: dict = field(default_factory=dict)  # status.stats(): training, evaluation, agent, harness seconds
    input_tokens: int = 0
    output_tokens: int = 0
    llm_calls: int = 0
    cost_usd: float = 0.0
    workers: int = 1
    tree: bool = False  # the tag used the tree strategy

    @property
    def total_seconds(self) -> float:
        return sum(self.time[k] for k in ("training_seconds", "evaluation_seconds", "agent_seconds", "harness_seconds"))

    @property
    def cost_per_experiment(self) -> float:
        return self.cost_usd / self.finished if self.finished else 0.0

    @property
    def draws_tree(self) -> bool:
        """The search tree is worth drawing: several workers, or the tree strategy."""
        return self.workers > 1 or self.tree


TIME_PARTS = (("training", "training_seconds"), ("start-up and evaluation", "evaluation_seconds"),
              ("agent proposing", "agent_seconds"), ("harness (checks, git, recording)", "harness_seconds"))


def sign(maximize: bool) -> float:
    """+1 when higher is better, -1 when lower is: multiply a difference by it to get a gain."""
    return 1.0 if maximize else -1.0


def experiments(rows, maximize: bool) -> list[Experiment]:
    """Every row with its parent node and its change against the nearest measured ancestor (a fix of a crash is
    compared with what the crash edited)."""
    parents = node_parents(rows)
    by_id = {r.id: r for r in rows}
    out = []
    for r in rows:
        reference, node, seen = None, parents.get(r.id), set()
        while node is not None and node in by_id and node not in seen:
            seen.add(node)
            if by_id[node].metric is not None and shown_status(by_id[node]) in ("keep", "discard"):
                reference = by_id[node].metric
                break
            node = parents.get(node)
        ok = r.metric is not None and shown_status(r) in ("keep", "discard")
        delta = r.metric - reference if ok and reference is not None else None
        out.append(Experiment(r, shown_status(r), parents.get(r.id), reference, delta,
                              None if delta is None else sign(maximize) * delta))
    return out


def running_best(rows, maximize: bool) -> list[tuple[int, float]]:
    """(row id, best kept metric so far) at each keep, in journal order; it starts afresh with each measured segment
    (a new protocol measures on another scale)."""
    out, best, segment = [], None, None
    for r in rows:
        if shown_status(r) != "keep" or r.metric is None:
            continue
        if r.segment != segment:
            best, segment = None, r.segment
        if best is None or sign(maximize) * (r.metric - best) > 0:
            best = r.metric
        out.append((r.id, best))
    return out


def kept_changes(rows, maximize: bool) -> list[KeptChange]:
    """Every keep in order, with its delta against the best before it (None for the first of a segment)."""
    kept = [r for r in rows if shown_status(r) == "keep" and r.metric is not None]
    out, previous = [], None  # previous: (the last keep, the running best after it)
    for r, (_, best) in zip(kept, running_best(rows, maximize)):
        ref = previous[1] if previous is not None and previous[0].segment == r.segment else None
        delta = None if ref is None else r.metric - ref
        out.append(KeptChange(r, ref, delta, None if delta is None else sign(maximize) * delta))
        previous = (r, best)
    return out


def top_by_gain(items: list[Experiment], n: int = 10) -> list[Experiment]:
    """The measured candidates with the largest gain over their parent, best first (baselines left out)."""
    ranked = [e for e in items if e.gain is not None and e.row.agent != "baseline"]
    return sorted(ranked, key=lambda e: (-e.gain, e.row.id))[:n]


def failures(rows, statuses=FAILED) -> list:
    """The rows that ended with one of `statuses`, in order."""
    return [r for r in rows if shown_status(r) in statuses]


def disagreements(rows, maximize: bool, sigma: float | None, k: float) -> dict[int, str]:
    """The kept changes whose val gain the hidden test split does not share (status.flag_test_disagreements)."""
    return flag_test_disagreements(rows, maximize, sigma or 0.0, k)


def summarize(rows, maximize: bool, best, sigma: float | None, metric_name: str, branch: str,
              segment: int | None = None) -> Summary:
    """The headline figures: baseline → best, keep and failure rates, pace, time split and the agent's spend."""
    s = stats(rows)
    done = [r for r in rows if r.state == "done"]
    candidates = [r for r in done if r.description != "baseline"]  # the rule of status.stats()
    failed = sum(r.status in FAILED for r in candidates)
    segment = segment if segment is not None else max((r.segment for r in rows), default=1)
    kept = [r for r in done if r.status == "keep" and r.metric is not None and r.segment == segment]
    baseline = next((r for r in kept if r.agent == "baseline"), kept[0] if kept else None)
    delta = best.metric - baseline.metric if best is not None and baseline is not None else None
    pct = 100.0 * delta / abs(baseline.metric) if delta is not None and baseline.metric else None
    return Summary(
        metric_name=metric_name, maximize=maximize, branch=branch, finished=len(done),
        running=sum(r.state != "done" for r in rows), candidates=len(candidates), kept=s["kept"],
        keep_rate=s["keep_rate"], failed=failed, failed_rate=failed / len(candidates) if candidates else 0.0,
        invalid=sum(r.status == "invalid" for r in candidates), per_hour=s["per_hour"], baseline=baseline, best=best,
        delta=delta, delta_pct=pct, gain=None if delta is None else sign(maximize) * delta, sigma=sigma, time=s,
        input_tokens=sum(r.input_tokens for r in rows), output_tokens=sum(r.output_tokens for r in rows),
        llm_calls=sum(r.llm_calls for r in rows), cost_usd=sum(r.cost_usd for r in rows),
        workers=len({r.worker for r in rows}) or 1, tree=any(r.strategy == "tree" for r in rows))


def fmt(value: float | None, digits: int = 6, signed: bool = False) -> str:
    """A metric as the report prints it; '-' for none."""
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def duration(seconds: float) -> str:
    """Seconds as 42s, 12m 5s or 3h 07m."""
    seconds = float(seconds or 0)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m {int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h {int(seconds % 3600 // 60):02d}m"
