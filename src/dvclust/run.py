"""A run folder: what `dvclust fit` writes and what predict/evaluate read back.

    RUN_DIR/config.yaml     resolved config + data source + versions (written before training)
    RUN_DIR/checkpoint.pt   weights, optimiser, training state; rewritten atomically every epoch
    RUN_DIR/history.csv     losses per epoch; ACC/NMI/ARI per target update when labels are known
    RUN_DIR/labels.csv      index, source, cluster, confidence (max q), outlier_score (-ELBO)[, label]
    RUN_DIR/metrics.json    acc, nmi, ari, per-class recall, cluster sizes (labels known only)
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

from . import metrics
from .config import SHALLOW_METHODS, Config
from .data import ImageData, ReadOptions, load_dataset
from .errors import DVClustError
from .estimators import DVC, load_model, make_estimator
from .io import load_checkpoint, save_checkpoint, write_csv_atomic, write_json_atomic, \
    write_text_atomic
from .runtime import Dist, versions

RECORDED_KEYS = ("versions", "data")  # written into config.yaml for the record, not settings


@dataclass
class DataSource:
    """Where a run's images come from and how they were preprocessed: recorded in config.yaml so
    that predict and evaluate read new images exactly as the run read its own."""

    path: str
    split: str = "all"
    options: ReadOptions = field(default_factory=ReadOptions)
    store: Path | None = None

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
    doc = yaml.safe_load(path.read_text()) or {}
    recorded = {k: doc.pop(k, None) for k in RECORDED_KEYS}
    return Config.from_dict(doc, source=str(path)), recorded


def run_source(run_dir: Path) -> DataSource:
    _, rec = read_run_config(run_dir)
    if not (rec.get("data") or {}).get("source"):
        raise DVClustError(f"{run_dir}/config.yaml: does not say which data was used; pass DATA")
    return DataSource.from_dict(rec["data"])


def predictions(model: DVC, data: ImageData) -> dict[str, np.ndarray]:
    """Label, confidence, outlier score and distance to the nearest centre of every image."""
    return model.predict_details(data)


def write_labels(path: Path, data: ImageData, pred: dict[str, np.ndarray]) -> None:
    header = ["index", "source", "cluster", "confidence", "outlier_score", "distance"]
    cols = [range(len(data)), data.sources or [str(i) for i in range(len(data))], pred["cluster"],
            [f"{c:.6f}" for c in pred["confidence"]], [f"{s:.4f}" for s in pred["outlier_score"]],
            [f"{d:.4f}" for d in pred["distance"]]]
    if "far" in pred:
        header.append("far_from_clusters")
        cols.append(pred["far"].astype(int))
    if data.labels is not None:
        header.append("label")
        cols.append(data.labels)
    write_csv_atomic(path, header, zip(*cols))


def write_metrics(path: Path, y: np.ndarray, labels: np.ndarray) -> dict:
    m = metrics.evaluate(y, labels)
    write_json_atomic(path, m)
    return m


def _estimator(cfg: Config, verbose: bool):
    return make_estimator(cfg.method, cfg.n_clusters, random_state=cfg.seed, verbose=verbose,
                          **{k: v for k, v in cfg.to_dict().items()
                             if k not in ("method", "n_clusters", "seed")})


def fit_run(data: ImageData, cfg: Config, run_dir: Path, source: DataSource,
            resume: bool = False, verbose: bool = True,
            auto_k: tuple[int, int] | None = None) -> tuple[DVC, dict | None]:
    """Train (or resume) into run_dir and write every output; returns the model and metrics.
    With `auto_k=(min, max)`, K is chosen after pretraining (see choose_k)."""
    if (run_dir / "checkpoint.pt").exists() and not resume:
        raise DVClustError(f"{run_dir}: already holds a run (checkpoint.pt); pass --resume to "
                           "continue it, or choose another --out")
    if cfg.method in SHALLOW_METHODS and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise DVClustError(f"method {cfg.method!r} trains no network and runs in one process; "
                           "start it without torchrun")
    is_main = Dist.from_env(cfg.device).is_main  # joins the torchrun group, if any, first
    if auto_k is not None:
        if cfg.method in SHALLOW_METHODS:
            raise DVClustError(f"--clusters auto pretrains a network; method {cfg.method!r} has "
                               "none, give K")
        k = choose_k(data, cfg, run_dir, source, resume, auto_k, verbose)
        cfg, resume = cfg.replace(n_clusters=k), True
        if is_main:
            write_config(run_dir, cfg, source)
    elif is_main and not resume:
        write_config(run_dir, cfg, source)
    model = _estimator(cfg, verbose).fit(data, run_dir=run_dir, resume=resume)
    m = None
    if is_main:
        pred = predictions(model, data)
        write_labels(run_dir / "labels.csv", data, pred)
        if data.skipped:
            write_csv_atomic(run_dir / "skipped.csv", ["source", "reason"], data.skipped)
        if data.labels is not None:
            m = write_metrics(run_dir / "metrics.json", data.labels, pred["cluster"])
    return model, m


def pretrain_only(data: ImageData, cfg: Config, run_dir: Path | None = None, resume: bool = False,
                  verbose: bool = True) -> DVC:
    """Phase 1 alone (the loop stops once pretraining has ended and is checkpointed)."""
    return _estimator(cfg, verbose).fit(data, run_dir=run_dir, resume=resume,
                                        _stop_after=lambda s: s.phase == "kmeans")


def choose_k(data: ImageData, cfg: Config, run_dir: Path, source: DataSource, resume: bool,
             k_range: tuple[int, int], verbose: bool = True) -> int:
    """`--clusters auto`: pretrain in run_dir, sweep K on the latent means, then rewrite the
    checkpoint for the chosen K so that the normal fit resumes from k-means initialisation.
    Phase 1 does not depend on K, so pretraining under a placeholder K loses nothing."""
    from .choose_k import describe, sweep_k, write_sweep_csv

    ckpt = run_dir / "checkpoint.pt"
    if resume and ckpt.exists():
        saved = load_checkpoint(ckpt)
        if saved["state"]["phase"] != "pretrain":  # K was chosen before the interruption
            return int(saved["config"]["n_clusters"])
    placeholder = cfg.replace(n_clusters=k_range[0])
    if Dist.from_env(cfg.device).is_main and not resume:
        write_config(run_dir, placeholder, source)
    pre = pretrain_only(data, placeholder, run_dir, resume, verbose)
    res = sweep_k(pre.transform(data), *k_range, seed=cfg.seed)
    if pre._dist.is_main:
        print(describe(res))  # a result, not progress: shown even with --quiet
        saved = load_checkpoint(ckpt)
        saved["config"]["n_clusters"] = res["k"]
        saved["model"]["head.centers"] = torch.zeros(res["k"], cfg.latent_dim)
        save_checkpoint(ckpt, {k: v for k, v in saved.items() if k not in ("format", "format_version")})
        write_sweep_csv(run_dir / "suggest_k.csv", res)
    pre._dist.barrier()
    return res["k"]


def load_run(run_dir: Path, device: str | None = None) -> DVC:
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
        rows = list(csv.reader(f))
    cols = list(zip(*rows[1:])) if len(rows) > 1 else [()] * len(rows[0])
    return {name: np.asarray(col) for name, col in zip(rows[0], cols)}
