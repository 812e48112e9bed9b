"""The CLI end to end, as a user runs it (subprocesses), and its one-line errors."""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from dvclust.io import load_checkpoint
from dvclust.training import PHASES

FAST_SETS = ["--set", "pretrain_epochs=3", "--set", "cluster_epochs=2", "--set", "kmeans_n_init=2"]


def dvclust(*args, check=True):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "dvclust", *map(str, args)], capture_output=True,
                       text=True, env=env, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"dvclust {args} failed ({p.returncode}):\n{p.stderr[-2000:]}")
    return p


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_fit_predict_evaluate_on_digits(tmp_path):
    run = tmp_path / "run"
    p = dvclust("fit", "digits", "--clusters", 10, "--out", run, "--seed", 3, "--quiet", *FAST_SETS)
    assert f"outputs in {run}" in p.stdout and "ACC" in p.stdout
    for name in ("labels.csv", "checkpoint.pt", "config.yaml", "history.csv", "metrics.json"):
        assert (run / name).is_file(), name
    rows = read_csv(run / "labels.csv")
    assert len(rows) == 1797 and rows[0]["source"] == "digits#0"
    assert set(rows[0]) == {"index", "source", "cluster", "confidence", "outlier_score", "distance",
                            "label"}
    assert all(0.1 <= float(r["confidence"]) <= 1.0 for r in rows)  # max of 10 probabilities
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["seed"] == 3 and cfg["n_clusters"] == 10 and "torch" in cfg["versions"]
    m = json.loads((run / "metrics.json").read_text())
    assert {"acc", "nmi", "ari"} <= set(m)
    hist = read_csv(run / "history.csv")
    assert [r["phase"] for r in hist].count("pretrain") == 3 and hist[-1]["phase"] == "cluster"

    dvclust("predict", run, "digits", "--out", tmp_path / "pred.csv")
    pred = read_csv(tmp_path / "pred.csv")
    assert [r["cluster"] for r in pred] == [r["cluster"] for r in rows]  # = labels_ on its images
    far = [int(r["far_from_clusters"]) for r in pred]
    assert 0 < sum(far) <= 0.011 * len(far)  # the training images' own 1% tail

    p = dvclust("evaluate", run)
    assert json.loads(p.stdout[: p.stdout.rindex("}") + 1])["acc"] == pytest.approx(m["acc"])


BAD_INPUT = [
    (["fit", "nowhere.npz", "--clusters", 3, "--out", "r"], "nowhere.npz: no such file"),
    (["fit", "imagenet", "--clusters", 3, "--out", "r"], "embedded: digits"),
    (["fit", "digits", "--clusters", 5000, "--out", "r"], "n_clusters=5000 is larger"),
    (["fit", "digits", "--clusters", 3, "--out", "r", "--set", "gama=1"], "unknown key"),
    (["fit", "digits", "--clusters", 3, "--out", "r", "--config", "missing.yaml"], "missing.yaml"),
    (["fit", "digits", "--out", "r"], "--clusters: give the number of clusters"),
    (["predict", "no_run", "digits"], "no_run: no checkpoint.pt"),
    (["evaluate", "no_run"], "no_run: no checkpoint.pt"),
]


@pytest.mark.parametrize("args, words", BAD_INPUT)
def test_bad_input_gives_one_line(tmp_path, monkeypatch, args, words):
    """In-process (typer's CliRunner): the message is one line naming the value at fault."""
    from typer.testing import CliRunner

    from dvclust.cli import app

    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, list(map(str, args)))
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], r.stderr


def test_bad_input_in_a_real_process_has_no_traceback(tmp_path):
    p = subprocess.run([sys.executable, "-m", "dvclust", "fit", "nowhere.npz", "-k", "3", "--out",
                        "r"], capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "nowhere.npz" in lines[0]


def test_a_runs_config_yaml_reproduces_the_run(tmp_path, blobs):
    """`fit --config RUN/config.yaml` takes the run's settings (K and seed included) and sets
    aside what the run recorded beside them (data, versions): the same labels again."""
    from typer.testing import CliRunner

    from dvclust.cli import app

    np.save(tmp_path / "b.npy", blobs[0])
    fit = ["fit", str(tmp_path / "b.npy"), "-q"]
    r = CliRunner().invoke(app, [*fit, "-k", "4", "--seed", "5", "--out", str(tmp_path / "a"),
                                 *FAST_SETS, "--set", "batch_size=32"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, [*fit, "--config", str(tmp_path / "a" / "config.yaml"),
                                 "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    a, b = read_csv(tmp_path / "a" / "labels.csv"), read_csv(tmp_path / "b" / "labels.csv")
    assert [r["cluster"] for r in a] == [r["cluster"] for r in b]
    cfg = yaml.safe_load((tmp_path / "b" / "config.yaml").read_text())
    assert (cfg["n_clusters"], cfg["seed"], cfg["pretrain_epochs"]) == (4, 5, 3)


def test_existing_run_needs_resume(tmp_path):
    dvclust("fit", "digits", "-k", 3, "--out", tmp_path / "r", "-q", *FAST_SETS)
    p = dvclust("fit", "digits", "-k", 3, "--out", tmp_path / "r", "-q", *FAST_SETS, check=False)
    assert p.returncode == 2 and "--resume" in p.stderr


@pytest.fixture(scope="module")
def blob_file(tmp_path_factory):
    rng = np.random.default_rng(0)
    n = 600
    x = rng.uniform(0, 0.1, size=(n, 16, 16)).astype(np.float32)
    for i in range(n):
        r = 2 + 5 * (i % 3)
        x[i, r:r + 4, r:r + 4] = 0.9
    path = tmp_path_factory.mktemp("data") / "blobs.npy"
    np.save(path, x)
    return path


KILL_SETS = ["--set", "pretrain_epochs=6", "--set", "cluster_epochs=6", "--set", "tol=0",
             "--set", "batch_size=32", "--set", "kmeans_n_init=2", "--seed", 7, "-q"]


@pytest.fixture(scope="module")
def uninterrupted(blob_file, tmp_path_factory):
    """The labels of one uninterrupted fit: the reference every killed-and-resumed fit must match."""
    run = tmp_path_factory.mktemp("full") / "run"
    dvclust("fit", blob_file, "-k", 3, "--out", run, *KILL_SETS)
    return read_csv(run / "labels.csv")


@pytest.mark.parametrize("phase, epoch", [("pretrain", 2), ("cluster", 0), ("cluster", 3)])
def test_sigkill_then_resume_gives_same_labels(tmp_path, blob_file, uninterrupted, phase, epoch):
    """A fit killed with SIGKILL at a point in training, then resumed, ends with the labels of an
    uninterrupted fit."""
    run = tmp_path / "cut"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "dvclust", "fit", str(blob_file), "-k", "3",
                             "--out", str(run), *map(str, KILL_SETS)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        ck = run / "checkpoint.pt"
        if ck.exists():
            st = load_checkpoint(ck)["state"]  # atomic writes: always a whole file
            if (PHASES.index(st["phase"]), st["epoch"]) >= (PHASES.index(phase), epoch):
                proc.send_signal(signal.SIGKILL)
                break
        time.sleep(0.02)
    proc.wait()
    killed_at = load_checkpoint(run / "checkpoint.pt")["state"]
    assert killed_at["phase"] == phase, f"killed at {killed_at['phase']}, not in {phase}"
    assert not (run / "labels.csv").exists()
    dvclust("fit", blob_file, "-k", 3, "--out", run, "--resume", "-q")
    assert read_csv(run / "labels.csv") == uninterrupted


def test_fit_on_image_folder_with_bad_files(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(0)
    for cls, bright in (("dark", 40), ("light", 200)):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(12):
            arr = np.clip(rng.normal(bright, 10, (24, 20)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(tmp_path / "imgs" / cls / f"{i}.png")
    (tmp_path / "imgs" / "dark" / "broken.png").write_bytes(b"")
    run = tmp_path / "run"
    p = dvclust("fit", tmp_path / "imgs", "-k", 2, "--size", 16, "--out", run,
                "--store", tmp_path / "store", *FAST_SETS, "--set", "batch_size=8")
    assert "skipped 1 unreadable file(s)" in p.stdout
    rows = read_csv(run / "labels.csv")
    assert len(rows) == 24 and rows[0]["source"] == "dark/0.png"
    skipped = read_csv(run / "skipped.csv")
    assert [r["source"] for r in skipped] == ["dark/broken.png"] and skipped[0]["reason"]
    assert json.loads((run / "metrics.json").read_text())["acc"] == 1.0
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["data"]["read_options"]["size"] == 16
    # predict reads new files with the run's preprocessing (size 16), whatever their size
    dvclust("predict", run, tmp_path / "imgs" / "light", "--out", tmp_path / "p.csv")
    pred = read_csv(tmp_path / "p.csv")
    light = {r["source"].split("/", 1)[1]: r["cluster"] for r in rows if r["source"].startswith("light")}
    assert {r["source"]: r["cluster"] for r in pred} == light
