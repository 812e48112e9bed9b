"""Label-free rules for ending phase 3, replayed on the histories of finished runs.

A rule reads only what a run sees as it goes (the fraction of labels that changed at each target
update), so stopping at update e gives exactly the state the uninterrupted run had at e (a seed
fixes the run on CPU): the labels scored at that update are the labels the stopped run would
write, and the replay needs no new fit. It reads the run folders that bench_labelling keeps
(K = 5 x classes, where phase 3 churns longest) and reports, per rule, where it stops, the NMI
there beside the end's, and the phase-3 seconds it saves.

    python bench/bench_stop.py
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path

import harness
from results_md import write_block

RUNS = harness.RESULTS / "runs" / "labelling"
TOL = 0.001  # the default tol: every rule below also stops where it would


def stall(patience: int):
    """Stop when the label change has not reached a new low for `patience` updates."""
    def rule(changes: list[float]) -> bool:
        best = min(changes[:-patience], default=None)
        return best is not None and min(changes[-patience:]) >= best
    rule.__name__ = f"no new low in {patience} updates"
    return rule


def plateau(window: int, drop: float):
    """Stop when the mean change of the last `window` updates is not `drop` below the window's
    before it."""
    def rule(changes: list[float]) -> bool:
        if len(changes) < 2 * window:
            return False
        now = statistics.mean(changes[-window:])
        return now > (1 - drop) * statistics.mean(changes[-2 * window:-window])
    rule.__name__ = f"mean of {window} not {drop:.0%} below the {window} before"
    return rule


RULES = [stall(5), stall(10), stall(20), plateau(10, 0.1), plateau(20, 0.1)]


def load(run: Path) -> dict | None:
    """Per target update: label change, NMI and the phase-3 seconds spent up to it."""
    if not (run / "history.csv").exists() or not (run / "metrics.json").exists():
        return None
    rows = list(csv.DictReader((run / "history.csv").open()))
    spent, updates = 0.0, []
    for r in rows:
        if r["phase"] == "target":
            spent += float(r["seconds"])
            change = float(r["label_change"]) if r["label_change"] else None
            updates.append({"change": change, "nmi": float(r["nmi"]), "spent": spent})
        elif r["phase"] == "cluster":
            spent += float(r["seconds"])
    metrics = json.loads((run / "metrics.json").read_text())
    return {"updates": updates, "end_nmi": metrics.get("nmi"), "total": spent}


def replay(updates: list[dict], rule) -> int:
    """The update at which `rule` (or tol) ends phase 3; the last one when neither does."""
    changes = []
    for e, u in enumerate(updates):
        if u["change"] is None:
            continue
        if u["change"] < TOL:
            return e
        changes.append(u["change"])
        if rule is not None and rule(changes):
            return e
    return len(updates) - 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=Path, default=RUNS, help="a folder of run folders")
    a = ap.parse_args()
    # DATASET__SEED: the default config (a variant's folder adds __KEY=VALUE)
    runs = {p.name: load(p) for p in sorted(a.runs.iterdir()) if p.name.count("__") == 1}
    runs = {k: v for k, v in runs.items() if v and v["updates"] and v["end_nmi"] is not None}
    head = ["run", "updates", "NMI start", "best (oracle)", "NMI end"]
    lines = ["| " + " | ".join(head + [r.__name__ for r in RULES]) + " |",
             "|" + "---|" * (len(head) + len(RULES))]
    deltas = {r.__name__: [] for r in RULES}
    saved = {r.__name__: [] for r in RULES}
    for name, run in runs.items():
        u = run["updates"]
        cells = [name, str(len(u) - 1), f"{u[0]['nmi']:.3f}", f"{max(x['nmi'] for x in u):.3f}",
                 f"{run['end_nmi']:.3f}"]
        for rule in RULES:
            e = replay(u, rule)
            # stopped at the last update = ran to the end: the end's labels are the result
            nmi = run["end_nmi"] if e == len(u) - 1 else u[e]["nmi"]
            deltas[rule.__name__].append(nmi - run["end_nmi"])
            saved[rule.__name__].append(1 - u[e]["spent"] / run["total"])
            cells.append(f"{e}: {nmi:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("| **mean NMI minus the end's / share of phase-3 time saved** | | | | | "
                 + " | ".join(f"{statistics.mean(deltas[r.__name__]):+.3f} / "
                              f"{statistics.mean(saved[r.__name__]):.0%}" for r in RULES) + " |")
    worst = {r.__name__: min(deltas[r.__name__]) for r in RULES}
    lines.append("| **worst run** | | | | | " + " | ".join(f"{worst[r.__name__]:+.3f}" for r in RULES)
                 + " |")
    write_block("bench_stop", "## bench_stop: label-free rules for ending phase 3, replayed\n\n"
                f"Command: `{harness.command(__file__)}`  \n{harness.stamp_line()}\n\n"
                f"Input: the {len(runs)} run folders bench_labelling keeps ({a.runs.name}: "
                "K = 5 x classes, default config). Each rule cell: the target update it stops "
                "at (tol included), and the NMI there.\n\n" + "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
