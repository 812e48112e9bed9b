"""How often `suggest-k` finds the true K: pretrain (default config), sweep K = 2..15 on the latent
means, compare the suggestion with the number of known classes.

    python bench/bench_suggest_k.py --datasets digits mnist chest64 --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import json
import time

import harness
from harness import RESULTS, dataset_spec
from results_md import write_block


def one(dataset: str, seed: int) -> dict:
    from dvclust import Config, load_dataset
    from dvclust.choose_k import sweep_k
    from dvclust.data import ReadOptions
    from dvclust.estimators import pretrain_only

    src, k, split, opts = dataset_spec(dataset)
    data = load_dataset(src, split=split, **({"options": ReadOptions(**opts)} if opts else {}))
    t0 = time.perf_counter()
    model = pretrain_only(data, Config(n_clusters=2, seed=seed), verbose=False)
    res = sweep_k(model.transform(data), 2, 15, seed=seed)
    return {"dataset": dataset, "seed": seed, "true_k": k, "suggested_k": res["k"],
            "clarity": res["clarity"], "ch_k": res["ch_k"], "db_k": res["db_k"],
            "wall_s": time.perf_counter() - t0, "stamp": harness.stamp(model.config_.to_dict())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", nargs="+", default=["digits", "mnist", "chest64"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--from-jsonl", help="write the table from results gathered elsewhere")
    a = ap.parse_args()
    if a.one:
        harness.emit(one(a.one[0], int(a.one[1])))
        return
    if a.from_jsonl:
        rows = [json.loads(ln.split("RESULT ", 1)[1]) for ln in open(a.from_jsonl) if "RESULT " in ln]
    else:
        rows = []
        for ds in a.datasets:
            for seed in a.seeds:
                rows.append(harness.run_case(__file__, ["--one", ds, seed]))
                harness.append_row(RESULTS / "suggest_k.jsonl", rows[-1])
                print(rows[-1], flush=True)
    table = ["| dataset | seed | true K | suggested K (silhouette) | clarity | Calinski-Harabasz K | "
             "Davies-Bouldin K |", "|---|---|---|---|---|---|---|"]
    table += [f"| {r['dataset']} | {r['seed']} | {r['true_k']} | {r['suggested_k']} | {r['clarity']} | "
              f"{r['ch_k']} | {r['db_k']} |" for r in rows]
    hits = sum(r["suggested_k"] == r["true_k"] for r in rows)
    write_block("bench_suggest_k", "## bench_suggest_k: does suggest-k find the true K?\n\n"
                f"Command: `{harness.command(__file__)}`  \n"
                f"{harness.stamp_line()}; rows in bench/results/suggest_k.jsonl\n\n" + "\n".join(table) +
                f"\n\nTrue K found in {hits} of {len(rows)} runs.")


if __name__ == "__main__":
    main()
