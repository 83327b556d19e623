"""What early stopping would have saved and cost on a recorded session: its runs' curves replayed through the rule.

A session records every training run's loss curve as the harness read it (`.autoresearch/runs/<id>/curve.json`,
points of (seconds since the run started, step, loss)), early stopping on or off. This script reads a workspace's
journal and those curves and replays the candidates in order, as the harness would have judged them with
`[decide] early_stop = true`: for each candidate's first run (its screen), at each moment the harness read new
progress lines (the curve's distinct timestamps), `earlystop.Rule.check` on the lines so far, against the best
row's curves and the finished rows' curves of the segment as the session had them at that row's start. Rows the
replay stops leave the references of later rows (their curves would have been marked stopped); the best follows
the recorded history, since later candidates were built on it.

For each rule setting it reports: the candidates it would have stopped, the seconds saved (the row's training and
evaluation seconds, every seed, minus the time of the stop), that as a share of the candidates' experiment time,
and the cost: kept rows it would have stopped (improvements lost), and stopped rows whose final metric was better
than the best's at the time (candidates a luckier measurement could have kept).

    python benchmarks/bench_early_stop.py WORKSPACE --tag es --save-session benchmarks/results/early_stop_session.json
    python benchmarks/bench_early_stop.py benchmarks/results/early_stop_session.json   # the recorded session again
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from autoresearch.config import load_config  # noqa: E402
from autoresearch.earlystop import Curve, Rule  # noqa: E402
from autoresearch.ledger import STATE_DIR, Ledger  # noqa: E402

SETTINGS = [  # (warmup, margin, patience, min_trials): the defaults first, then looser and stricter ones
    (0.3, 0.05, 3, 3), (0.3, 0.05, 3, 1), (0.3, 0.02, 2, 1), (0.2, 0.0, 1, 1), (0.5, 0.05, 3, 3), (0.3, 0.10, 3, 3),
]


def seed_curves(run_dir: Path) -> list[Curve]:
    """The row's curves, its screen (curve.json) first."""
    paths = sorted(run_dir.glob("curve*.json"), key=lambda p: (p.name != "curve.json", p.name))
    return [c for c in (Curve.load(p) for p in paths) if c is not None and c.points]


def first_stop(rule: Rule, screen: Curve, best: list[Curve], finished: list[list[Curve]]) -> tuple[float, str] | None:
    """When the harness would have stopped this run (the first tick whose lines so far fail the rule), or None."""
    for t in sorted({p[0] for p in screen.points}):
        reason = rule.check([p for p in screen.points if p[0] <= t], best, finished)
        if reason:
            return t, reason
    return None


def replay(rows, curves: dict[int, list[Curve]], rule: Rule, maximize: bool = False) -> dict:
    """The rule on every candidate of a recorded segment, in order; see the module docstring."""
    best_id, best_metric, finished, stopped, per_row = None, None, [], [], []
    sign = 1.0 if maximize else -1.0
    for r in rows:
        summary = r.summary
        spent = (r.wall_seconds or 0.0) + float(summary.get("all_runs_evaluation_seconds", 0) or 0)
        own = curves.get(r.id, [])
        hit = None
        if r.agent != "baseline" and best_id is not None and own and r.status in ("keep", "discard"):
            hit = first_stop(rule, own[0], curves.get(best_id, []), [curves[i] for i in finished if curves.get(i)])
        if hit:
            stopped.append(r.id)
        elif r.status in ("keep", "discard") and own:
            finished.append(r.id)
        gain = sign * (r.metric - best_metric) if r.metric is not None and best_metric is not None else None
        if r.agent != "baseline":
            per_row.append({"id": r.id, "status": r.status, "metric": r.metric, "best_metric": best_metric,
                            "gain_over_best": gain, "description": r.description,
                            "experiment_seconds": round(r.experiment_seconds or 0.0, 1),
                            "train_and_eval_seconds": round(spent, 1),
                            "stopped_at": round(hit[0], 1) if hit else None,
                            "saved_seconds": round(max(0.0, spent - hit[0]), 1) if hit else 0.0,
                            "reason": hit[1] if hit else ""})
        if r.status == "keep":
            best_id, best_metric = r.id, r.metric
    candidates = [p for p in per_row if p["status"] in ("keep", "discard")]
    saved = sum(p["saved_seconds"] for p in per_row)
    total = sum(p["experiment_seconds"] for p in per_row)
    return {"rule": {k: v for k, v in asdict(rule).items() if k != "budget_seconds"},
            "candidates": len(candidates), "stopped": len(stopped),
            "stopped_discards": sum(p["stopped_at"] is not None and p["status"] == "discard" for p in per_row),
            "stopped_keeps": sum(p["stopped_at"] is not None and p["status"] == "keep" for p in per_row),
            "kept": sum(p["status"] == "keep" for p in per_row),
            "stopped_better_than_best": sum(p["stopped_at"] is not None and (p["gain_over_best"] or 0) > 0 for p in per_row),
            "closest_stopped_gain": max((p["gain_over_best"] for p in per_row if p["stopped_at"] is not None
                                         and p["gain_over_best"] is not None), default=None),
            "saved_seconds": round(saved, 1), "candidates_experiment_seconds": round(total, 1),
            "saved_share": round(saved / total, 3) if total else 0.0, "rows": per_row}


@dataclass
class Recorded:
    """What the replay needs of a journal row."""

    id: int
    agent: str
    status: str
    metric: float | None
    description: str
    wall_seconds: float | None
    experiment_seconds: float | None
    summary: dict


def read_workspace(root: Path, tag: str) -> tuple[list[Recorded], dict[int, list[Curve]], dict]:
    """The done rows of the tag's current segment, their curves, and the segment's protocol."""
    ledger = Ledger(root, f"autoresearch/{tag}", "metric")
    rows = [Recorded(r.id, r.agent, r.status, r.metric, r.description, r.wall_seconds, r.experiment_seconds,
                     {"all_runs_evaluation_seconds": r.summary.get("all_runs_evaluation_seconds", 0)})
            for r in ledger.where("segment = ? AND state = 'done'", (ledger.segment,))]
    protocol = {**(ledger.protocol() or {}), "maximize": load_config(root).metric.direction == "maximize"}
    ledger.close()
    return rows, {r.id: seed_curves(root / STATE_DIR / "runs" / str(r.id)) for r in rows}, protocol


def save_session(path: Path, rows, curves, protocol, tag: str) -> None:
    """The rows and curves in one file, so that the replay can be run again without the workspace."""
    kept = {k: protocol.get(k) for k in ("budget_seconds", "device", "seeds", "maximize")}
    path.write_text(json.dumps({"protocol": {**kept, "tag": tag},
                                "rows": [asdict(r) for r in rows],
                                "curves": {str(i): [json.loads(c.to_json(protocol.get("budget_seconds") or 0)) for c in cs]
                                           for i, cs in curves.items()}}) + "\n")


def read_session(path: Path) -> tuple[list[Recorded], dict[int, list[Curve]], dict]:
    data = json.loads(path.read_text())
    curves = {int(i): [Curve([tuple(p) for p in c["points"]], c["wall_seconds"]) for c in cs] for i, cs in data["curves"].items()}
    return [Recorded(**r) for r in data["rows"]], curves, data["protocol"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a workspace, or a session file written by --save-session")
    parser.add_argument("--tag", default="demo")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "early_stop.json")
    parser.add_argument("--save-session", type=Path, help="also write the rows and curves replayed to this file")
    args = parser.parse_args(argv)
    root = args.source.resolve()
    rows, curves, protocol = read_session(root) if root.is_file() else read_workspace(root, args.tag)
    if args.save_session:
        save_session(args.save_session, rows, curves, protocol, args.tag)
    budget = float(protocol.get("budget_seconds") or 0) or max(r.wall_seconds or 0 for r in rows)
    points = [len(c.points) for cs in curves.values() for c in cs]
    results = [replay(rows, curves, Rule(budget, *s), bool(protocol.get("maximize"))) for s in SETTINGS]
    report = {"source": str(args.source), "tag": protocol.get("tag", args.tag), "budget_seconds": budget,
              "device": protocol.get("device"),
              "rows": len(rows), "curves": len(points), "points_per_curve": sorted(points),
              "default": results[0], "variants": [{k: v for k, v in r.items() if k != "rows"} for r in results[1:]]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{len(rows)} rows, {len(points)} curves ({min(points, default=0)}-{max(points, default=0)} points each), "
          f"budget {budget:g}s")
    print(f"{'warmup':>6} {'margin':>6} {'patience':>8} {'min_trials':>10} | {'stopped':>7} {'of':>3} | {'saved s':>8} "
          f"{'share':>6} | keeps stopped | stopped but better than the best")
    for r in results:
        k = r["rule"]
        print(f"{k['warmup']:>6g} {k['margin']:>6g} {k['patience']:>8d} {k['min_trials']:>10d} | {r['stopped']:>7d} "
              f"{r['candidates']:>3d} | {r['saved_seconds']:>8.0f} {100 * r['saved_share']:>5.1f}% | "
              f"{r['stopped_keeps']} of {r['kept']:<9} | {r['stopped_better_than_best']}")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
