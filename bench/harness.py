"""The one benchmark harness: the dataset registry and loader, one case per process (so that its
peak RSS is its own), and the stamp that every result row carries.

    worker side:  if a.one: harness.emit(one(...))        # prints one RESULT line
    driver side:  row = harness.run_case(__file__, [...])  # runs `script --one ...`, parses it
    every row:    {**row, "stamp": harness.stamp(config)}  # commit, config, device, threads, ...
"""
from __future__ import annotations

import json
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
RAW = RESULTS / "raw"          # device logs and other free-form output, kept as they came
DATA = Path(os.environ.get("DVCLUST_DATA", HERE.parent.parent / "shared" / "data"))
DATASETS = {  # name -> (path or embedded name, K, split, read options for image folders)
    "digits": ("digits", 10, "all", None),
    "mnist": (DATA / "mnist", 10, "all", None),
    "mnist-test": (DATA / "mnist", 10, "test", None),
    "retina": (DATA / "medmnist" / "retinamnist.npz", 5, "all", None),
    "pneumonia": (DATA / "medmnist_derived" / "pneumoniamnist_subset_varun19424.npz", 2, "all", None),
    "pneumonia-official": (DATA / "medmnist" / "pneumoniamnist.npz", 2, "all", None),
    "chest64": (DATA / "images" / "chest_xray_kermany_224", 2, "all", {"size": 64}),
    "ham64": (DATA / "images" / "ham10000_200x150", 7, "all", {"size": 64, "channels": 3}),
    "pbc64": (DATA / "images" / "pbc_blood_cells_96", 8, "all", {"size": 64, "channels": 3}),
}


def dataset_spec(name: str):
    """A name above, or PATH:K for any path load_dataset reads (a store folder, say)."""
    if name in DATASETS:
        return DATASETS[name]
    path, _, k = name.rpartition(":")
    return Path(path), int(k), "all", None


def source(name: str):
    """(DataSource, K) of a registered dataset or PATH:K: what a run folder records as its data."""
    from dvclust.data import ReadOptions
    from dvclust.rundir import DataSource

    src, k, split, opts = dataset_spec(name)
    return DataSource(str(src), split, ReadOptions(**(opts or {}))), k


def load(name: str):
    """(ImageData, K) of a registered dataset or PATH:K."""
    src, k = source(name)
    return src.load(verbose=False), k


def parse_value(v: str):
    import yaml
    return yaml.safe_load(v)


def parse_setting(kv: str) -> tuple[str, object]:
    """KEY=VALUE of the command line (--set, a method's [...]) as a config key and its YAML value."""
    key, sep, value = kv.partition("=")
    if not sep:
        raise SystemExit(f"setting {kv!r}: expected KEY=VALUE")
    return key, parse_value(value)


# ---- one case in its own process --------------------------------------------------------------
def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def emit(row: dict) -> None:
    """Worker side: the case's result as one RESULT line, with this process's peak RSS."""
    print("RESULT " + json.dumps({"peak_rss_mb": peak_rss_mb(), **row}), flush=True)


class CaseFailed(RuntimeError):
    pass


def run_case(script: str | Path, args: list[str], env: dict | None = None,
             timeout: float | None = None) -> dict:
    """Driver side: run `python script --one ARGS...` and return its RESULT row."""
    p = subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True,
                       text=True, env={**os.environ, **(env or {})}, timeout=timeout)
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise CaseFailed(f"{Path(script).name} {' '.join(map(str, args))} failed:\n{p.stderr[-2000:]}")
    return json.loads(line[7:])


# ---- the stamp ---------------------------------------------------------------------------------
def commit() -> str:
    """HEAD's short hash, with '+dirty' when tracked source files differ from it; BENCH_COMMIT
    where there is no git (a device machine gets the working tree only: gpu_session.sh)."""
    if os.environ.get("BENCH_COMMIT"):
        return os.environ["BENCH_COMMIT"]

    def git(*a):
        return subprocess.run(["git", *a], capture_output=True, text=True, cwd=HERE).stdout.strip()

    head = git("rev-parse", "--short=12", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "src", "bench/*.py")
    return head + ("+dirty" if dirty else "")


# the code this process runs: a case that ends after a later commit still ran this one
STARTED_AT = commit()


def stamp(config: dict | None = None, threads: int | None = None) -> dict:
    """What every result row records: code (commit, versions), setting (resolved config) and
    machine (device, threads), and the date."""
    import torch

    from dvclust.runtime import versions

    return {"commit": STARTED_AT, "config": config, "date": time.strftime("%Y-%m-%d"),
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "threads": threads or torch.get_num_threads(), "versions": versions()}


def stamp_line(threads: int | None = None) -> str:
    """The stamp as one line for the blocks of RESULTS.md that are not built from rows."""
    s = stamp(threads=threads)
    return (f"Run on {s['date']}, commit {s['commit']}, {s['device']}, {s['threads']} torch "
            f"threads, torch {s['versions']['torch']}")


# ---- rows --------------------------------------------------------------------------------------
def read_rows(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in open(path)] if path.exists() else []


def append_row(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def command(script: str) -> str:
    return f"python bench/{Path(script).name} " + " ".join(shlex.quote(x) for x in sys.argv[1:])
