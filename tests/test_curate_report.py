"""From clusters to labels: review queue, names, exports that parse back, and the HTML report
opened in headless Chromium."""
import csv
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from dvclust import DVClustError
from dvclust.curate import export, review_queue, write_review
from dvclust.labelling import set_names
from dvclust.report import build_report

SETS = ["--set", "pretrain_epochs=2", "--set", "cluster_epochs=1", "--set", "kmeans_n_init=2"]


def _fit(*args):
    p = subprocess.run([sys.executable, "-m", "dvclust", "fit", *map(str, args), "-q", *SETS],
                       capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert p.returncode == 0, p.stderr[-2000:]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "digits"
    _fit("digits", "-k", 4, "--out", run)
    return run


@pytest.fixture(scope="module")
def pixel_run(tmp_path_factory):
    """A baseline without a network (no decoder, no training curves) must report too."""
    run = tmp_path_factory.mktemp("runs") / "pca"
    _fit("digits", "-k", 4, "--out", run, "--method", "pca-kmeans")
    return run


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for cls, v in (("a", 30), ("b", 220)):
        (base / "imgs" / cls).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(np.clip(rng.normal(v, 20, (20, 20)), 0, 255).astype(np.uint8)).save(
                base / "imgs" / cls / f"{i}.png")
    _fit(base / "imgs", "-k", 2, "--size", 16, "--out", base / "run", "--store", base / "store",
         "--set", "batch_size=8")
    return base / "run"


def _labels(run):
    with open(run / "labels.csv") as f:
        return list(csv.DictReader(f))


def test_review_queue(digits_run):
    rows = review_queue(digits_run, n=5)
    conf = sorted(float(r["confidence"]) for r in _labels(digits_run))
    low = [r for r in rows if "low confidence" in r["reason"]]
    assert len(low) == 5 and max(r["confidence"] for r in low) == pytest.approx(conf[4], abs=1e-6)
    assert sum("outlier" in r["reason"] for r in rows) == 5
    assert write_review(digits_run, 5).exists()


def test_names_errors(digits_run):
    with pytest.raises(DVClustError, match="unknown cluster id 7"):
        set_names(digits_run, ["7=x"])
    with pytest.raises(DVClustError, match="not safe as a folder name"):
        set_names(digits_run, ["1=../../etc"])
    with pytest.raises(DVClustError, match="expected CLUSTER_ID=NAME"):
        set_names(digits_run, ["one"])
    # several clusters may share a name (many-to-one)
    assert set_names(digits_run, ["0=same", "1=same"]).names == {0: "same", 1: "same"}
    assert set_names(digits_run, ["0=zeroes", "1=ones"]).names == {0: "zeroes", 1: "ones"}


def test_exports_parse_back(digits_run, folder_run, tmp_path):
    set_names(folder_run, ["0=first", "1=second"])
    labels = _labels(folder_run)
    # CSV with names
    with open(export(folder_run, "csv", tmp_path / "csv")) as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == [("first", "second")[int(r["cluster"])] for r in labels]
    # Label Studio tasks: the documented shape, local-files URLs to the real files
    tasks = json.loads(export(folder_run, "labelstudio", tmp_path / "ls").read_text())
    assert len(tasks) == len(labels)
    for i, (t, row) in enumerate(zip(tasks, labels)):  # every task in full, as Label Studio reads it
        assert t == {"id": i + 1, "data": {"image": t["data"]["image"], "source": row["source"]},
                     "predictions": [{"model_version": "dvclust", "score": t["predictions"][0]["score"],
                                      "result": [{"from_name": "label", "to_name": "image",
                                                  "type": "choices", "value": {"choices": [
                                                      ("first", "second")[int(row["cluster"])]]}}]}]}
    t = tasks[0]
    assert t["data"]["image"].startswith("/data/local-files/?d=")
    assert os.path.isfile("/" + t["data"]["image"].split("?d=", 1)[1])
    pred = t["predictions"][0]
    assert 0 < pred["score"] <= 1
    r = pred["result"][0]
    assert r["type"] == "choices" and r["from_name"] and r["to_name"]
    assert r["value"]["choices"][0] in ("first", "second")
    # ImageFolder tree: counts equal the label counts
    tree = export(folder_run, "folders", tmp_path / "tree")
    counts = {d.name: len(list(d.iterdir())) for d in tree.iterdir()}
    expect = {n: sum(("first", "second")[int(r["cluster"])] == n for r in labels) for n in ("first", "second")}
    assert counts == {k: v for k, v in expect.items() if v}
    # array data (digits) has no files of its own: PNGs are written inside the export folder
    tree = export(digits_run, "folders", tmp_path / "dtree", copy=True)
    assert sum(len(list(d.iterdir())) for d in tree.iterdir()) == 1797
    with pytest.raises(DVClustError, match="--format"):
        export(digits_run, "zip")


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


CHECK = """<script>
window.addEventListener('error', e => console.log('DVCLUST_ERROR ' + e.message));
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const bad = imgs.filter(i => !(i.complete && i.naturalWidth > 0));
  console.log('DVCLUST_CHECK images=' + imgs.length + ' bad=' + bad.length +
              ' svgs=' + document.querySelectorAll('svg').length);
});
</script></body>"""


@pytest.mark.parametrize("which", ["digits_run", "folder_run", "pixel_run"])
def test_report_opens_in_chromium(which, request, tmp_path):
    run = request.getfixturevalue(which)
    path = build_report(run, tmp_path / "report.html", sample=500)
    text = path.read_text()
    assert "<h2>Galleries</h2>" in text and "Latent space" in text and "Configuration" in text
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium not installed (.ci/run installs it)")
    checked = tmp_path / "checked.html"
    checked.write_text(text.replace("</body>", CHECK))
    p = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update",
                        "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
                        "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000",
                        "--dump-dom", checked.as_uri()], capture_output=True, text=True, timeout=120)
    log = p.stderr
    m = re.search(r"DVCLUST_CHECK images=(\d+) bad=(\d+) svgs=(\d+)", log)
    assert m, log[-3000:]
    images, bad, svgs = map(int, m.groups())
    assert images > 10 and bad == 0 and svgs >= 3
    assert "DVCLUST_ERROR" not in log
    assert not re.search(r"CONSOLE.*(Uncaught|Error)", log)


def test_png_exports_by_a_pool_of_processes_equal_the_serial_ones(digits_run, tmp_path, monkeypatch):
    """Many PNGs to write go to a process pool; the files are the ones one process writes."""
    from dvclust import curate

    serial = export(digits_run, "labelstudio", tmp_path / "serial")
    monkeypatch.setattr(curate, "PNG_PARALLEL_FROM", 1)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    pooled = export(digits_run, "labelstudio", tmp_path / "pooled")
    assert serial.read_text().replace("serial", "pooled") == pooled.read_text()
    names = sorted(p.name for p in (tmp_path / "serial" / "images").iterdir())
    assert len(names) == 1797 and names == sorted(p.name for p in (tmp_path / "pooled" / "images").iterdir())
    for name in names[::97]:
        a = np.asarray(Image.open(tmp_path / "serial" / "images" / name))
        assert np.array_equal(a, np.asarray(Image.open(tmp_path / "pooled" / "images" / name)))
