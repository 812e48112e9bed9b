"""The command line: a thin layer that parses options, calls the module that owns each job, and
turns every DVClustError into one line (exit 2)."""
from __future__ import annotations

import functools
import json
import os
import sys
import time
from enum import Enum
from pathlib import Path
from typing import Annotated, List, Optional

import numpy as np
import typer

from . import curate
from .config import Config
from .data import ReadOptions
from .errors import DVClustError
from .rundir import DataSource, fit_run, load_run, read_labels, read_run_config, restarted_job, \
    resumed_source, run_source, write_labels, write_metrics
from .training.distributed import torchrun_world_size

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Deep Variational Clustering: label large image collections by clusters.")


def _version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"dvclust {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                              help="print the version and exit")) -> None:
    """Deep Variational Clustering: label large image collections by clusters."""
    from . import log

    log.setup()


def degenerate_warning(sizes: np.ndarray) -> str | None:
    """One line when the clusters are degenerate: one holds nearly all images, or some hold
    under 1% of them (with what to try), else None."""
    n, k = int(sizes.sum()), len(sizes)
    if k > 1 and sizes.max() >= 0.9 * n:
        return (f"warning: one cluster holds {sizes.max() / n:.0%} of the images; try another "
                "--seed, --set size_prior=kmeans, or fewer clusters")
    tiny = int((sizes < 0.01 * n).sum())
    if tiny and k <= 100:  # with more than 100 clusters, 1% is the average size
        return (f"warning: {tiny} of {k} clusters hold under 1% of the images each; they may be "
                "outliers worth a look (dvclust review), or K is larger than the data supports")
    return None


def clean_errors(fn):
    """Bad input ends in one line on stderr (exit 2), never a traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DVClustError as e:
            typer.secho(f"error: {e}", fg="red", err=True)
            raise typer.Exit(2)
        except KeyboardInterrupt:
            typer.secho("interrupted: the last finished epoch is saved; continue with "
                        "`dvclust fit ... --resume`", fg="yellow", err=True)
            raise typer.Exit(130)
    return wrapper


def parse_sets(sets: list[str]) -> dict:
    import yaml

    out = {}
    for s in sets:
        if "=" not in s:
            raise DVClustError(f"--set {s!r}: expected KEY=VALUE")
        k, v = s.split("=", 1)
        try:
            out[k.strip()] = yaml.safe_load(v)
        except yaml.YAMLError as e:
            raise DVClustError(f"--set {s!r}: the value is not valid YAML "
                               f"({str(e).splitlines()[0]})") from None
    return out


DATA_HELP = ("'digits' (embedded); a folder (searched recursively) or file of PNG/JPEG/TIFF/BMP "
             "images, DICOM or NIfTI volumes (2-D slices); an MNIST idx folder; a MedMNIST .npz "
             "(any flag and size); a .npy/.npz image array; or a store folder")


class Method(str, Enum):
    dvc, idec, dec = "dvc", "idec", "dec"
    vae_kmeans, ae_kmeans, pca_kmeans, kmeans = "vae-kmeans", "ae-kmeans", "pca-kmeans", "kmeans"


class Resize(str, Enum):
    pad, crop = "pad", "crop"


class Format(str, Enum):
    csv, labelstudio, folders = "csv", "labelstudio", "folders"


class Rule(str, Enum):
    silhouette, consensus, balance = "silhouette", "consensus", "balance"


class By(str, Enum):
    density, confidence = "density", "confidence"


class LabelsFrom(str, Enum):
    cluster, neighbours = "cluster", "neighbours"


# Options fit and suggest-k share, defined once (None: not given on the command line)
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML with config keys")]
SetsOpt = Annotated[List[str], typer.Option("--set", help="override one config key: --set gamma=0.2")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="random seed (default 0)")]
SplitOpt = Annotated[str, typer.Option(help="splits to use: train, val, test (comma-joined) or all")]
SizeOpt = Annotated[Optional[int], typer.Option(
    help="image folders/DICOM/NIfTI: resize to SIZE x SIZE [default: 64]")]
ResizeOpt = Annotated[Optional[Resize], typer.Option(
    help="image folders/DICOM/NIfTI: pad to square or crop the centre [default: pad]")]
ChannelsOpt = Annotated[Optional[int], typer.Option(
    help="image folders/DICOM/NIfTI: 1 (gray) or 3 (RGB) [default: 1]")]
AxisOpt = Annotated[Optional[int], typer.Option(help="NIfTI: slice axis [default: 2]")]
SlicesOpt = Annotated[Optional[str], typer.Option(help="NIfTI: slices start:stop:step [default: ::]")]
ClipOpt = Annotated[Optional[tuple[float, float]], typer.Option(
    help="NIfTI: clip intensity percentiles [default: 0.5 99.5]")]
StoreOpt = Annotated[Optional[Path], typer.Option(
    help="folder for the preprocessed store (default: cache)")]


def given_read_options(**opts) -> dict:
    """The read options typed on the command line (None = not given)."""
    return {k: (tuple(v) if k == "clip" else v) for k, v in opts.items() if v is not None}


@app.command()
@clean_errors
def fit(
    data: str = typer.Argument(..., help=DATA_HELP),
    clusters: Optional[str] = typer.Option(
        None, "--clusters", "-k", help="number of clusters K, or 'auto' to choose it after "
        "pretraining (default: n_clusters of --config)"),
    k_range: tuple[int, int] = typer.Option((2, 15), help="with --clusters auto: the K range to sweep"),
    out: Path = typer.Option(..., "--out", "-o", help="run folder for every output"),
    config: ConfigOpt = None,
    seed: SeedOpt = None,
    split: SplitOpt = "all",
    sets: SetsOpt = [],
    method: Optional[Method] = typer.Option(None, "--method", "-m",
                                            help="dvc (default) or a baseline"),
    resume: bool = typer.Option(False, "--resume", help="continue the interrupted run in --out"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
    size: SizeOpt = None,
    resize: ResizeOpt = None,
    channels: ChannelsOpt = None,
    folder_labels: Optional[bool] = typer.Option(None, help="class subfolder names as known labels [default: on]"),
    axis: AxisOpt = None,
    slices: SlicesOpt = None,
    clip: ClipOpt = None,
    store: StoreOpt = None,
    workers: Optional[int] = typer.Option(None, help="processes for preprocessing (default: all cores)"),
):
    """Train DVC (or a baseline, --method) on DATA; write labels, model, config, history and
    metrics into --out."""
    given = given_read_options(size=size, resize=resize.value if resize else None,
                               channels=channels, folder_labels=folder_labels, axis=axis,
                               slices=slices, clip=clip)
    source = DataSource(data, split, ReadOptions(**given), store)
    if not resume and restarted_job(out):
        resume = True
        if os.environ.get("RANK") == "0":
            typer.echo(f"torchrun restarted the workers: resuming the run in {out}", err=True)
    if resume:
        source = resumed_source(out, source, given)
    cfg, auto = _fit_config(out, config, clusters, k_range, seed, method, sets, resume)
    t0 = time.time()
    dataset = source.load(workers, verbose=not quiet)
    model, m, is_main = fit_run(dataset, cfg, out, source, resume=resume, verbose=not quiet,
                                auto_k=tuple(k_range) if auto else None)
    if is_main:
        _fit_summary(model, m, dataset, out, time.time() - t0)
    if torchrun_world_size() > 1:
        _leave_worker()


def _leave_worker() -> None:
    """End a torchrun worker, its outputs written, without the interpreter's teardown: there
    gloo's threads sometimes abort the process (SIGABRT, "terminate called without an active
    exception", with no Python frame left; docs/DECISIONS.md, "Multi-node"), and torchrun's
    other agents then wait out their exit barrier for it."""
    import logging

    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(0)


def _fit_config(out: Path, config, clusters, k_range, seed, method, sets, resume) -> tuple[Config, bool]:
    """fit's settings: --config (or, resuming, the run's own), then K, --set, --seed, --method
    over it; and whether K is 'auto'."""
    if resume and config is None and (out / "config.yaml").exists():
        cfg, _ = read_run_config(out)
    else:
        cfg = Config.from_yaml(config) if config else Config()
    if clusters is None and config is None and not resume:
        raise DVClustError("--clusters: give the number of clusters K (or 'auto', or a --config "
                           "that holds n_clusters)")
    clusters = str(cfg.n_clusters) if clusters is None else clusters
    auto = clusters.strip().lower() == "auto"
    if not auto and not clusters.strip().isdigit():
        raise DVClustError(f"--clusters {clusters!r}: expected a whole number or 'auto'")
    changes = {"n_clusters": k_range[0] if auto else int(clusters), **parse_sets(sets)}
    if seed is not None:
        changes["seed"] = seed
    if method is not None:
        changes["method"] = method.value
    return cfg.replace(**changes), auto


def _fit_summary(model, m: dict | None, dataset, out: Path, seconds: float) -> None:
    k = model.config_.n_clusters
    sizes = ", ".join(str(int((model.labels_ == j).sum())) for j in range(k))
    typer.echo(f"\nclustered {len(dataset)} images into {k} clusters (sizes {sizes}) in {seconds:.0f}s")
    if m:
        typer.echo(f"against the known labels: ACC {m['acc']:.4f}  NMI {m['nmi']:.4f}  "
                   f"ARI {m['ari']:.4f}")
    warn = degenerate_warning(np.bincount(model.labels_, minlength=k))
    if warn:
        typer.secho(warn, fg="yellow")
    if dataset.skipped:
        typer.echo(f"skipped {len(dataset.skipped)} unreadable file(s): listed in "
                   f"{out / 'skipped.csv'}")
    typer.echo(f"outputs in {out}/: labels.csv, checkpoint.pt, config.yaml, latents.npy"
               + (", history.csv" if (out / "history.csv").exists() else "")
               + (", metrics.json" if m else "") + (", skipped.csv" if dataset.skipped else ""))
    typer.echo(f"next: `dvclust report {out}` to look at the clusters, `dvclust typical {out}` "
               "for the images to name them by")


@app.command()
@clean_errors
def predict(
    run_dir: Path = typer.Argument(..., help="a finished run folder"),
    data: str = typer.Argument(..., help="images to label (same size and channels as the run's)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o",
                                       help="CSV to write (default RUN_DIR/predictions.csv)"),
    split: str = typer.Option("all", help="splits to use, as in fit"),
    device: Optional[str] = typer.Option(None, help="device for inference (default: the run's)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
):
    """Label new images with a trained run: cluster, confidence and outlier score per image."""
    model = load_run(run_dir, device)
    # the run's own preprocessing, so that new images look like the ones it was trained on
    dataset = run_source(run_dir).with_data(data, split).load(verbose=not quiet)
    out = out or run_dir / "predictions.csv"
    if dataset.skipped:  # listed whether the store was built now or reused
        from .io import write_csv_atomic

        listed = out.with_name(out.stem + "_skipped.csv")
        write_csv_atomic(listed, ["source", "reason"], dataset.skipped)
        typer.echo(f"skipped {len(dataset.skipped)} unreadable file(s): listed in {listed}")
    pred = model.predict_details(dataset)
    # "far": further from every centre than 99% of the run's own images were
    limit = np.quantile(read_labels(run_dir)["distance"].astype(float), 0.99)
    pred["far"] = pred["distance"] > limit
    if (run_dir / "names.json").exists() or (run_dir / "corrections.csv").exists():
        from .labelling import label_new

        pred["self_label"], pred["how"] = label_new(run_dir, pred["cluster"], pred["latent"])
    write_labels(out, dataset, pred)
    typer.echo(f"labelled {len(dataset)} images -> {out}; {int(pred['far'].sum())} lie further from "
               f"every cluster than 99% of the training images (column far_from_clusters)")


@app.command()
@clean_errors
def evaluate(
    run_dir: Path = typer.Argument(..., help="a finished run folder"),
    data: Optional[str] = typer.Argument(None, help="labelled data (default: the run's own)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="JSON to write (default "
                                       "RUN_DIR/metrics.json for the run's own data, "
                                       "RUN_DIR/metrics_<data>.json for other data)"),
):
    """Score a run's clusters against known labels: ACC, NMI, ARI, per-class recall."""
    from .labelling import safe_folder

    model = load_run(run_dir)
    source = run_source(run_dir)
    if data is not None:
        source = source.with_data(data, "all")
    dataset = source.load(verbose=False)
    if dataset.labels is None:
        raise DVClustError(f"{source.path}: holds no known labels to evaluate against")
    # other data's figures never replace the run's own metrics.json (the report reads it)
    own = data is None or source.path == run_source(run_dir).path
    out = out or run_dir / ("metrics.json" if own else f"metrics_{safe_folder(Path(data).stem)}.json")
    m = write_metrics(out, dataset.labels, model.predict(dataset), model.n_clusters,
                      dataset.class_names)
    typer.echo(json.dumps({k: m[k] for k in ("acc", "nmi", "ari", "per_class_recall")}, indent=2))
    typer.echo(f"written to {out}")


@app.command()
@clean_errors
def review(
    run_dir: Path = typer.Argument(..., help="a finished run folder"),
    n: int = typer.Option(200, "--n", help="how many of each: least confident, most outlying"),
):
    """List the images most worth a human look: least confident and most outlying."""
    path = curate.write_review(run_dir, n)
    typer.echo(f"review queue -> {path}")


@app.command()
@clean_errors
def name(
    run_dir: Path = typer.Argument(..., help="a finished run folder"),
    pairs: List[str] = typer.Argument(None, help="CLUSTER_ID=NAME pairs, e.g. 0=normal 3=normal "
                                      "7='viral pneumonia' (several clusters may share a name)"),
    from_csv: Optional[Path] = typer.Option(None, "--from", help="a CSV with columns cluster,name"),
    mixed: List[int] = typer.Option([], "--mixed", help="mark a cluster mixed: its images are "
                                    "labelled by propagation (repeat the option for several)"),
    unmixed: List[int] = typer.Option([], "--unmixed", help="take a mixed mark back"),
    unname: List[int] = typer.Option([], "--unname", help="remove a cluster's name"),
    labels_from: Optional[LabelsFrom] = typer.Option(
        None, "--labels-from", help="cluster (default: a named cluster's images carry its name) or "
        "neighbours (once every cluster is named: each image takes the vote of its nearest named "
        "and corrected images, so that a correction relabels the images around it)"),
):
    """Name clusters (many-to-one), or mark them mixed; `labels` and the exports use the names."""
    from .labelling import cluster_name, set_names

    if not (pairs or from_csv or mixed or unmixed or unname or labels_from):
        raise DVClustError("name: give CLUSTER_ID=NAME pairs, --from names.csv, --mixed, --unname "
                           "or --labels-from")
    names = set_names(run_dir, pairs or [], from_csv, mixed, unmixed, unname,
                      labels_from.value if labels_from else None)
    typer.echo(", ".join(f"{k}={v}" for k, v in sorted(names.names.items())) or "no names")
    if names.labels_from != "cluster":
        typer.echo(f"labels from: {names.labels_from}")
    if names.mixed:
        typer.echo("mixed: " + ", ".join(cluster_name(names, c) + f" ({c})" for c in sorted(names.mixed)))
    typer.echo(f"-> {run_dir / 'names.json'}")


@app.command()
@clean_errors
def typical(
    run_dir: Path = typer.Argument(..., help="a finished run folder"),
    per_cluster: int = typer.Option(5, "--per-cluster", "-m", help="images per cluster"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="CSV (default RUN_DIR/typical.csv)"),
    by: By = typer.Option(By.confidence, "--by", help="confidence (highest q) or density "
                          "(TypiClust: densest in latent space)"),
):
    """The images to look at to name each cluster: cluster,rank,index,source (largest cluster first)."""
    from .labelling import write_typical

    path = write_typical(run_dir, per_cluster, out, by.value)
    typer.echo(f"typical images -> {path}")


@app.command("next")
@clean_errors
def next_looks(
    run_dir: Path = typer.Argument(..., help="a run whose clusters are named"),
    n: int = typer.Option(50, "--n", help="how many images"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="CSV (default RUN_DIR/next.csv)"),
):
    """Once the clusters are named: the n images to label next (`correct`), each from a part of the
    latent space that no named or corrected image covers yet; best with `name --labels-from
    neighbours`."""
    from .labelling import write_next_looks

    path = write_next_looks(run_dir, n, out)
    typer.echo(f"next images to label -> {path}")


@app.command()
@clean_errors
def correct(
    run_dir: Path = typer.Argument(..., help="a finished run folder"),
    corrections: Path = typer.Argument(..., help="CSV with columns index or source, and label "
                                       "(an empty label withdraws an earlier correction)"),
):
    """Label single images by hand; kept in RUN_DIR/corrections.csv, ahead of any cluster name."""
    from .labelling import correct_from_csv

    n = correct_from_csv(run_dir, corrections)
    typer.echo(f"{n} correction(s) added -> {run_dir / 'corrections.csv'}")


@app.command()
@clean_errors
def labels(
    run_dir: Path = typer.Argument(..., help="a finished run folder"),
    out: Optional[Path] = typer.Option(None, "--out", "-o",
                                       help="CSV (default RUN_DIR/self_labels.csv)"),
):
    """One label per image from names, corrections and propagation -> self_labels.csv."""
    from .labelling import write_self_labels

    path, counts = write_self_labels(run_dir, out)
    typer.echo(f"labels -> {path}: {counts['cluster']} by a cluster name, {counts['corrected']} "
               f"corrected, {counts['propagated']} propagated, {counts['none']} without a label")


@app.command()
@clean_errors
def export(
    run_dir: Path = typer.Argument(..., help="a finished run folder"),
    format: Format = typer.Option(Format.csv, "--format", "-f", help="what to write"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="export folder (default RUN_DIR/export)"),
    copy: bool = typer.Option(False, help="folders: copy files instead of linking them"),
    document_root: str = typer.Option("/", help="labelstudio: its LOCAL_FILES_DOCUMENT_ROOT"),
    image_url: Optional[str] = typer.Option(
        None, help="labelstudio: the address of `dvclust serve RUN_DIR` (http://127.0.0.1:8765), "
        "which then serves the tasks' images: no files written, no local-files set-up"),
):
    """Export labels with cluster names: CSV, Label Studio tasks, or a folder per cluster."""
    path = curate.export(run_dir, format.value, out, copy, document_root, image_url)
    typer.echo(f"exported ({format.value}) -> {path}")


@app.command("import-labels")
@clean_errors
def import_labels(
    run_dir: Path = typer.Argument(..., help="the run whose Label Studio tasks were reviewed"),
    export_json: Path = typer.Argument(..., help="Label Studio's JSON export of the project"),
):
    """Turn reviewed Label Studio tasks into per-image corrections (then run `dvclust labels`)."""
    n = curate.import_labelstudio(run_dir, export_json)
    typer.echo(f"{n} annotated image(s) -> {run_dir / 'corrections.csv'}")


@app.command()
@clean_errors
def serve(
    run_dir: Path = typer.Argument(..., help="a finished run folder"),
    host: str = typer.Option("127.0.0.1", help="address to listen on; another than this machine's "
                             "own needs the token printed at start"),
    port: int = typer.Option(8765, help="port to listen on"),
):
    """The review app in a browser: name, merge (one name for several clusters) and correct."""
    from .serve import serve as run_server

    run_server(run_dir, host, port)


@app.command("suggest-k")
@clean_errors
def suggest_k(
    data: str = typer.Argument(..., help=DATA_HELP),
    out: Path = typer.Option(Path("suggest_k"), "--out", "-o", help="folder for the curves and CSV"),
    k_min: int = typer.Option(2, help="smallest K"),
    k_max: int = typer.Option(15, help="largest K"),
    config: ConfigOpt = None,
    sets: SetsOpt = [],
    seed: SeedOpt = None,
    split: SplitOpt = "all",
    size: SizeOpt = None,
    resize: ResizeOpt = None,
    channels: ChannelsOpt = None,
    axis: AxisOpt = None,
    slices: SlicesOpt = None,
    clip: ClipOpt = None,
    store: StoreOpt = None,
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Suggest K: pretrain, then score k-means on the latent means for each K in a range."""
    from .choose_k import describe, sweep_k, write_sweep
    from .estimators import pretrain_only

    cfg = (Config.from_yaml(config) if config else Config()).replace(
        n_clusters=k_min, **parse_sets(sets), **({} if seed is None else {"seed": seed}))
    opts = ReadOptions(**given_read_options(size=size, resize=resize.value if resize else None,
                                            channels=channels, axis=axis, slices=slices, clip=clip))
    dataset = DataSource(data, split, opts, store).load(verbose=not quiet)
    model = pretrain_only(dataset, cfg, verbose=not quiet)
    res = sweep_k(model.transform(dataset), k_min, k_max, seed=cfg.seed)
    svg, table = write_sweep(out, res)
    typer.echo(describe(res))
    typer.echo(f"curves -> {svg}, table -> {table}")


@app.command()
@clean_errors
def pick(
    run_dirs: List[Path] = typer.Argument(..., help="finished runs on the same data (seeds or configs)"),
    rule: Rule = typer.Option(Rule.silhouette, help="silhouette (on each run's latent means), "
                              "consensus (agreement with the other runs) or balance (evenest "
                              "cluster sizes)"),
):
    """Choose among runs without labels (docs/DECISIONS.md, "dvclust pick", measures each rule)."""
    from .select import STABLE_AGREEMENT, agreement, pick as best, score_runs

    rule = rule.value
    scores, labels = score_runs(run_dirs, rule)
    i = best(scores)
    for j, (r, sc) in enumerate(zip(run_dirs, scores)):
        typer.echo(f"{'->' if j == i else '  '} {r}  {rule} {sc:.4f}")
    typer.echo(f"chosen: {run_dirs[i]}")
    agree = agreement(labels)
    typer.echo(f"agreement between the runs: {agree:.2f} (mean NMI of their labels; 1 = the same "
               "clusters)")
    if agree < STABLE_AGREEMENT:
        typer.echo(f"the runs disagree (below {STABLE_AGREEMENT}): the clusters depend on the run "
                   "more than on the data; review them before naming (docs/DECISIONS.md, "
                   "\"Where self-training helps\")")


@app.command()
@clean_errors
def report(
    run_dir: Path = typer.Argument(..., help="a finished run folder"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="HTML file (default RUN_DIR/report.html)"),
    sample: int = typer.Option(3000, help="images in the latent map"),
):
    """Write one self-contained report.html: galleries, latent map, curves, metrics, config."""
    from .report import build_report

    path = build_report(run_dir, out, sample)
    typer.echo(f"report -> {path}")


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
