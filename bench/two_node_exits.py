"""How often a two-node fit ends cleanly: tests/test_distributed.py's two torchrun agents
(`--nnodes 2 --nproc-per-node 1`, c10d rendezvous on 127.0.0.1, gloo, 1,200 images), run again
and again. A fit counts as hung when it is not over in --timeout s (a node's agent waiting out
torchrun's 300 s exit barrier for a worker that died); a hung fit's processes are killed.
Run it with the machine loaded (the hang was seen on a busy 2-core machine): docs/DECISIONS.md,
"Multi-node".

    python bench/two_node_exits.py --trials 45
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import harness  # noqa: E402
from results_md import write_block  # noqa: E402
from test_distributed import _blobs_npz, _free_port, _kill_nodes, _two_nodes  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=45)
    ap.add_argument("--timeout", type=float, default=150)
    a = ap.parse_args()
    counts = {"ended": 0, "failed": 0, "hung": 0}
    seconds = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        _blobs_npz(base / "b.npz", n=1200)
        for trial in range(a.trials):
            t0 = time.time()
            procs = _two_nodes(base / "b.npz", base / f"run{trial}", _free_port())
            try:
                for p in procs:
                    p.communicate(timeout=max(1.0, t0 + a.timeout - time.time()))
                what = "ended" if all(p.returncode == 0 for p in procs) else "failed"
            except subprocess.TimeoutExpired:
                what = "hung"
                _kill_nodes(procs)
                for p in procs:
                    p.communicate()
            counts[what] += 1
            seconds.append(time.time() - t0)
            print(f"trial {trial}: {what} in {seconds[-1]:.0f} s", flush=True)
    text = ("| trials | ended | failed | hung | median s |\n|---|---|---|---|---|\n"
            f"| {a.trials} | {counts['ended']} | {counts['failed']} | {counts['hung']} | "
            f"{sorted(seconds)[len(seconds) // 2]:.0f} |")
    print(text)
    write_block("two_node_exits",
                "## two_node_exits: how often a two-node torchrun fit ends cleanly\n\n"
                f"Command: `{harness.command(__file__)}`  \n"
                f"{harness.stamp_line()}; a hung fit is one not over in {a.timeout:.0f} s.\n\n"
                + text)


if __name__ == "__main__":
    main()
