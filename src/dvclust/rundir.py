"""The run folder: what `dvclust fit` writes (fit_run) and what every other command reads back.

    RUN_DIR/config.yaml     resolved config + data source + versions (written before training)
    RUN_DIR/checkpoint.pt   weights, optimiser, training state; rewritten atomically every epoch
    RUN_DIR/history.csv     losses per epoch; ACC/NMI/ARI per target update when labels are known
    RUN_DIR/labels.csv      index, source, cluster, confidence (max q), outlier_score (-ELBO)[, label]
    RUN_DIR/metrics.json    acc, nmi, ari, per-class recall, cluster sizes (labels known only)
    RUN_DIR/latents.npy     the latent mean of every image, N x latent_dim float32
    RUN_DIR/names.json, corrections.csv, self_labels.csv   what labelling.py adds
"""
from __future__ import annotations

import contextlib
import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import yaml

from . import metrics
from .config import RECORDED_KEYS, SHALLOW_METHODS, Config, read_yaml_mapping
from .data import ImageData, ReadOptions, load_dataset
from .errors import DVClustError
from .estimators import estimator_for, load_model
from .io import atomic_file, file_lock, write_csv_atomic, write_json_atomic, write_text_atomic
from .runtime import versions
from .training.distributed import process_group, torchrun_job, torchrun_world_size


class FitResult(NamedTuple):
    model: Any             # the fitted estimator
    metrics: dict | None   # against known labels, when there are any
    is_main: bool          # rank 0 (or the only process): the one that wrote the outputs


@dataclass
class DataSource:
    """Where a run's images come from and how they were preprocessed: recorded in config.yaml so
    that predict and evaluate read new images exactly as the run read its own."""

    path: str
    split: str = "all"
    options: ReadOptions = field(default_factory=ReadOptions)
    store: Path | None = None

    def __post_init__(self) -> None:
        # recorded absolute, so that the run folder works from any directory
        p = Path(self.path).expanduser()
        if p.exists():
            self.path = str(p.resolve())

    def load(self, workers: int | None = None, verbose: bool = True) -> ImageData:
        return load_dataset(self.path, self.split, self.options, self.store, workers, verbose)

    def with_data(self, path: str, split: str) -> "DataSource":
        return DataSource(path, split, self.options, None)

    def to_dict(self) -> dict:
        return {"source": self.path, "split": self.split, "read_options": self.options.to_dict(),
                "store": str(self.store) if self.store else None}

    @classmethod
    def from_dict(cls, d: dict) -> "DataSource":
        opts = dict(d.get("read_options") or {})
        known = set(ReadOptions().to_dict())
        if set(opts) - known:
            raise DVClustError(f"config.yaml: unknown read_options key(s) "
                               f"{', '.join(sorted(set(opts) - known))}; known: {', '.join(sorted(known))}")
        if "clip" in opts:
            opts["clip"] = tuple(opts["clip"])
        store = d.get("store")
        return cls(d["source"], d.get("split", "all"), ReadOptions(**opts), Path(store) if store else None)


def write_config(run_dir: Path, cfg: Config, source: DataSource) -> None:
    doc = {**cfg.to_dict(), "data": source.to_dict(), "versions": versions()}
    write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(doc, sort_keys=False))


def read_run_config(run_dir: Path) -> tuple[Config, dict]:
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise DVClustError(f"{run_dir}: not a dvclust run folder (no config.yaml)")
    doc = read_yaml_mapping(path)
    recorded = {k: doc.pop(k, None) for k in RECORDED_KEYS}
    return Config.from_saved(doc, source=str(path)), recorded


def run_source(run_dir: Path) -> DataSource:
    _, rec = read_run_config(run_dir)
    if not (rec.get("data") or {}).get("source"):
        raise DVClustError(f"{run_dir}/config.yaml: does not say which data was used; pass DATA")
    return DataSource.from_dict(rec["data"])


def resumed_source(out: Path, source: DataSource, given: dict) -> DataSource:
    """A resumed run reads its data exactly as it did before the interruption: the recorded
    source where the path is the same, refused where a read option given now differs."""
    if not (out / "config.yaml").exists():
        return source
    recorded = run_source(out)
    if recorded.path != source.path:
        return source
    old = recorded.options.to_dict()
    changed = {k: v for k, v in ReadOptions(**{**old, **given}).to_dict().items() if v != old[k]}
    if changed:
        raise DVClustError(f"{out}: cannot resume with different read options ("
                           + ", ".join(f"{k}: {old[k]!r} -> {v!r}" for k, v in changed.items())
                           + "); drop them, or start a new --out")
    return recorded


def write_labels(path: Path, data: ImageData, pred: dict[str, np.ndarray]) -> None:
    header = ["index", "source", "cluster", "confidence", "outlier_score", "distance"]
    cols = [range(len(data)), data.sources or [str(i) for i in range(len(data))], pred["cluster"],
            [f"{c:.6f}" for c in pred["confidence"]], [f"{s:.4f}" for s in pred["outlier_score"]],
            [f"{d:.4f}" for d in pred["distance"]]]
    if "far" in pred:
        header.append("far_from_clusters")
        cols.append(pred["far"].astype(int))
    if "self_label" in pred:  # predict, on a run with names: the label the run gives each image
        header += ["self_label", "how"]
        cols += [pred["self_label"], pred["how"]]
    if data.labels is not None:  # known classes, by name where the data has names (folders)
        header.append("label")
        cols.append(np.asarray(data.class_names, dtype=object)[data.labels]
                    if data.class_names else data.labels)
    write_csv_atomic(path, header, zip(*cols))


JOB_FILE = ".torchrun-job"   # the torchrun job that started the run (see restarted_job)
# What a fit writes: a fresh fit removes an earlier run's copies, so that nothing stale is read
# beside the new config. Human work (names, corrections) is never removed: the fit refuses.
FIT_OUTPUTS = ("labels.csv", "metrics.json", "latents.npy", "history.csv", "skipped.csv",
               "suggest_k.csv", "self_labels.csv", "typical.csv", "review.csv", "report.html",
               "predictions.csv", JOB_FILE)
HUMAN_WORK = ("names.json", "corrections.csv")


def restarted_job(run_dir: Path) -> bool:
    """Whether this is a torchrun worker that torchrun restarted (--max-restarts) in the job that
    started the run in run_dir: it finds that job's id beside a checkpoint, and resumes the run
    as the same command with --resume would. (TORCHELASTIC_RESTART_COUNT cannot tell: a node
    whose worker was healthy restarts it for the new rendezvous with the count unchanged.)"""
    job, started_by = torchrun_job(), run_dir / JOB_FILE
    return (job is not None and (run_dir / "checkpoint.pt").exists() and started_by.is_file()
            and started_by.read_text() == job)


def clear_stale_outputs(run_dir: Path) -> None:
    kept = [f for f in HUMAN_WORK if (run_dir / f).exists()]
    if kept:
        raise DVClustError(f"{run_dir}: holds {' and '.join(kept)} from an earlier run; a new fit "
                           "would orphan them: move them away, or choose another --out")
    for f in FIT_OUTPUTS:
        (run_dir / f).unlink(missing_ok=True)


def write_latents(run_dir: Path, z: np.ndarray) -> None:
    """latents.npy: the latent mean of every image (what typical images and propagation use)."""
    with atomic_file(run_dir / "latents.npy") as f:
        np.save(f, np.ascontiguousarray(z, dtype=np.float32))


def write_metrics(path: Path, y: np.ndarray, labels: np.ndarray, n_clusters: int,
                  class_names: list[str] | None = None) -> dict:
    """ACC/NMI/ARI, per-class recall (the classes by name where the data has names) and the
    size of each of the n_clusters clusters."""
    m = metrics.evaluate(y, labels, n_clusters)
    if class_names:
        m["per_class_recall"] = {class_names[int(k)]: v for k, v in m["per_class_recall"].items()}
    write_json_atomic(path, m)
    return m


def fit_run(data: ImageData, cfg: Config, run_dir: Path, source: DataSource,
            resume: bool = False, verbose: bool = True,
            auto_k: tuple[int, int] | None = None) -> FitResult:
    """Train (or resume) into run_dir and write every output (rank 0); joins and leaves the
    torchrun process group when there is one. With `auto_k=(min, max)`, K is chosen after
    pretraining (choose_k.pretrain_and_choose_k)."""
    if (run_dir / "checkpoint.pt").exists() and not resume:
        raise DVClustError(f"{run_dir}: already holds a run (checkpoint.pt); pass --resume to "
                           "continue it, or choose another --out")
    if cfg.method in SHALLOW_METHODS and torchrun_world_size() > 1:
        raise DVClustError(f"method {cfg.method!r} trains no network and runs in one process; "
                           "start it without torchrun")
    if auto_k is not None and cfg.method in SHALLOW_METHODS:
        raise DVClustError(f"--clusters auto pretrains a network; method {cfg.method!r} has "
                           "none, give K")
    with process_group(cfg.device) as dist, contextlib.ExitStack() as owned:
        if dist.is_main:  # one fit owns a run folder at a time (rank 0 speaks for a torchrun job)
            owned.enter_context(file_lock(
                run_dir / ".lock", wait=False, busy=f"{run_dir}: another dvclust fit is writing "
                "this run folder now; wait for it to end, or choose another --out"))
            if not resume:
                clear_stale_outputs(run_dir)
                if (job := torchrun_job()) is not None:
                    write_text_atomic(run_dir / JOB_FILE, job)
        if auto_k is not None:
            from .choose_k import pretrain_and_choose_k

            if dist.is_main and not resume:
                write_config(run_dir, cfg.replace(n_clusters=auto_k[0]), source)
            k = pretrain_and_choose_k(data, cfg, run_dir, resume, auto_k, dist, verbose)
            cfg, resume = cfg.replace(n_clusters=k), True
            if dist.is_main:
                write_config(run_dir, cfg, source)
        elif dist.is_main and not resume:
            write_config(run_dir, cfg, source)
        model = estimator_for(cfg, verbose).fit(data, run_dir=run_dir, resume=resume)
        m = None
        if dist.is_main:
            pred = model.predict_details(data)
            write_labels(run_dir / "labels.csv", data, pred)
            write_latents(run_dir, pred["latent"])
            if data.skipped:
                write_csv_atomic(run_dir / "skipped.csv", ["source", "reason"], data.skipped)
            if data.labels is not None:
                m = write_metrics(run_dir / "metrics.json", data.labels, pred["cluster"],
                                  cfg.n_clusters, data.class_names)
    return FitResult(model, m, dist.is_main)


def load_run(run_dir: Path, device: str | None = None):
    ckpt = run_dir / "checkpoint.pt"
    if not ckpt.exists():
        raise DVClustError(f"{run_dir}: no checkpoint.pt; is this a dvclust run folder?")
    model = load_model(ckpt, device=device)
    if model.phase_ != "done":
        raise DVClustError(f"{run_dir}: the run stopped in phase '{model.phase_}'; finish it with "
                           "`dvclust fit ... --resume` first")
    return model


def read_labels(run_dir: Path) -> dict[str, np.ndarray]:
    """labels.csv of a finished run, column by column (strings; cast where needed)."""
    path = run_dir / "labels.csv"
    if not path.is_file():
        raise DVClustError(f"{run_dir}: no labels.csv; is the run finished?")
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        rows = list(reader)
    short = next((i for i, r in enumerate(rows) if len(r) != len(header)), None)
    if short is not None:
        raise DVClustError(f"{path}, line {short + 2}: {len(rows[short])} fields, the header has "
                           f"{len(header)}; the file is damaged (fit the run again to rewrite it)")
    # object arrays of the strings: numpy's fixed-width str arrays took longer to build than the
    # file took to parse (10^6 rows)
    out = {name: np.array([r[j] for r in rows], dtype=object) for j, name in enumerate(header)}
    k = read_run_config(run_dir)[0].n_clusters
    clusters = out.get("cluster", np.array([], dtype=object))
    ok = np.array([c.isdigit() for c in clusters], dtype=bool)
    if ok.all():
        ok = clusters.astype(np.int64) < k
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        raise DVClustError(f"{path}, line {i + 2}: cluster {str(clusters[i])!r} is not a cluster id "
                           f"of this run (0..{k - 1})")
    return out
