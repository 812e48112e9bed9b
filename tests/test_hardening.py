"""Bad input is one line naming the file or value (exit 2), never a traceback (issue 17's cases),
run in-process with typer's CliRunner."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from dvclust import DVClustError
from dvclust.cli import app, degenerate_warning
from dvclust.config import Config

FAST = ["--set", "pretrain_epochs=1", "--set", "cluster_epochs=1", "--set", "kmeans_n_init=1"]


def run(*args, code=0):
    r = CliRunner().invoke(app, list(map(str, args)))
    assert r.exit_code == code, (r.output, r.stderr)
    if code == 2:
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
        return lines[0]
    return r.output


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("h") / "run"
    run("fit", "digits", "-k", 3, "--out", out, "-q", *FAST)
    return out


def test_version():
    assert run("--version").strip().startswith("dvclust 0.")


@pytest.mark.parametrize("key, value", [("gamma", ".inf"), ("beta", ".nan"), ("tol", ".inf"),
                                        ("min_delta", "-.inf"), ("lr", ".nan")])
def test_config_numbers_must_be_finite(tmp_path, monkeypatch, key, value):
    monkeypatch.chdir(tmp_path)
    line = run("fit", "digits", "-k", 3, "--out", "r", "--set", f"{key}={value}", code=2)
    assert f"{key}=" in line and "invalid" in line
    with pytest.raises(DVClustError, match=key):
        Config(**{key: float("inf")})


def test_yaml_tags_folders_and_broken_values_are_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "evil.yaml").write_text("beta: !!python/object/apply:os.system ['echo pwned']\n")
    assert "evil.yaml: not valid YAML" in run("fit", "digits", "-k", 3, "--out", "r", "--config",
                                              "evil.yaml", code=2)
    (tmp_path / "adir").mkdir()
    assert "adir: is a folder" in run("fit", "digits", "-k", 3, "--out", "r", "--config", "adir",
                                      code=2)
    assert "--set 'lr=[1,{': the value is not valid YAML" in run(
        "fit", "digits", "-k", 3, "--out", "r", "--set", "lr=[1,{", code=2)


def test_a_tampered_run_config_is_one_line(digits_run, tmp_path):
    cfg = digits_run / "config.yaml"
    good = cfg.read_text()
    try:
        cfg.write_text(good + "extra: !!python/object/apply:os.system ['echo pwned']\n")
        assert "config.yaml: not valid YAML" in run("evaluate", digits_run, code=2)
        doc = yaml.safe_load(good)
        doc["data"]["read_options"]["sharpen"] = True
        cfg.write_text(yaml.safe_dump(doc))
        assert "unknown read_options key(s) sharpen" in run("evaluate", digits_run, code=2)
    finally:
        cfg.write_text(good)


@pytest.mark.parametrize("bad", ["x", "7", "-1"])
def test_a_hand_edited_labels_csv_is_one_line(digits_run, bad):
    path = digits_run / "labels.csv"
    good = path.read_text()
    lines = good.splitlines()
    cells = lines[5].split(",")
    cells[2] = bad
    try:
        path.write_text("\n".join(lines[:5] + [",".join(cells)] + lines[6:]) + "\n")
        line = run("review", digits_run, code=2)
        assert f"labels.csv, line 6: cluster {bad!r} is not a cluster id of this run (0..2)" in line
    finally:
        path.write_text(good)


def test_a_truncated_labels_csv_row_is_one_line(digits_run):
    path = digits_run / "labels.csv"
    good = path.read_text()
    lines = good.splitlines()
    try:
        path.write_text("\n".join(lines[:5] + [lines[5].rsplit(",", 2)[0]] + lines[6:]) + "\n")
        line = run("review", digits_run, code=2)
        assert "labels.csv, line 6: " in line and "the file is damaged" in line
    finally:
        path.write_text(good)


def test_review_n_must_be_positive(digits_run):
    assert "--n -5: expected 1 or more" in run("review", digits_run, "--n", -5, code=2)


def test_complex_arrays_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "c.npy", np.ones((4, 8, 8), np.complex64))
    assert "expected real numeric pixel values, got dtype complex64" in run(
        "fit", tmp_path / "c.npy", "-k", 2, "--out", "r", code=2)


def test_degenerate_results_end_with_a_warning():
    assert "one cluster holds 95% of the images" in degenerate_warning(np.array([95, 3, 2]))
    assert "2 of 5 clusters hold under 1%" in degenerate_warning(np.array([500, 300, 198, 1, 1]))
    assert degenerate_warning(np.array([30, 30, 40])) is None


# ---- the run folder ---------------------------------------------------------------------------
def test_two_fits_into_one_folder_at_once_the_second_is_refused(tmp_path):
    from dvclust.io import file_lock

    out = tmp_path / "r"
    with file_lock(out / ".lock"):  # as a running fit holds it
        line = run("fit", "digits", "-k", 3, "--out", out, "-q", *FAST, code=2)
    assert "another dvclust fit is writing this run folder now" in line
    assert not (out / "labels.csv").exists()


def test_a_fresh_fit_owns_its_folder(tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "labels.csv").write_text("index,source,cluster\n0,old,0\n")
    (out / "metrics.json").write_text("{}")
    (out / "report.html").write_text("old")
    run("fit", "digits", "-k", 3, "--out", out, "-q", "--method", "kmeans")
    assert not (out / "report.html").exists() and "digits#0" in (out / "labels.csv").read_text()
    (out / "checkpoint.pt").unlink()
    (out / "names.json").write_text('{"names": {"0": "x"}, "mixed": []}')
    assert "holds names.json from an earlier run" in run("fit", "digits", "-k", 3, "--out", out,
                                                         "-q", "--method", "kmeans", code=2)


def test_evaluate_on_other_data_keeps_the_runs_metrics(digits_run, tmp_path):
    from dvclust import load_dataset

    d = load_dataset("digits")
    np.savez(tmp_path / "few.npz", images=d.images[:200], labels=d.labels[:200])
    own = (digits_run / "metrics.json").read_text()
    run("evaluate", digits_run, tmp_path / "few.npz")
    assert (digits_run / "metrics.json").read_text() == own
    assert (digits_run / "metrics_few.json").exists()


def test_a_run_folder_works_from_any_directory(tmp_path, monkeypatch):
    from dvclust import load_dataset

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    np.save(tmp_path / "a" / "x.npy", load_dataset("digits").images[:300])
    monkeypatch.chdir(tmp_path / "a")
    run("fit", "x.npy", "-k", 3, "--out", "run", "-q", "--method", "kmeans")
    monkeypatch.chdir(tmp_path / "b")
    run("export", tmp_path / "a" / "run", "--format", "folders", "--out", "exp")
    assert sum(1 for _ in (tmp_path / "b" / "exp" / "folders").rglob("*.png")) == 300


# ---- inputs -----------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["images", "labels", "train_labels"])
def test_npz_object_arrays_are_refused_without_running_code(tmp_path, monkeypatch, where):
    monkeypatch.chdir(tmp_path)
    imgs = np.zeros((4, 8, 8), np.uint8)
    obj = np.array([{"a": 1}] * 4, dtype=object)
    arrays = {"train_images": imgs, "train_labels": obj} if where == "train_labels" else \
        {"images": obj if where == "images" else imgs, "labels": obj if where == "labels" else np.zeros(4)}
    np.savez(tmp_path / "o.npz", **arrays)
    line = run("fit", tmp_path / "o.npz", "-k", 2, "--out", "r", code=2)
    assert f"o.npz[{where}]: refused: Object arrays cannot be loaded" in line


def test_a_3d_medmnist_file_says_what_it_holds(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    np.savez(tmp_path / "v.npz", train_images=np.zeros((5, 28, 28, 28), np.uint8),
             train_labels=np.zeros((5, 1)))
    line = run("fit", tmp_path / "v.npz", "-k", 2, "--out", "r", code=2)
    assert "holds 3-D volumes (5 x 28 x 28 x 28)" in line and "NIfTI" in line


def _pngs(folder, n, value):
    from PIL import Image

    folder.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(np.full((12, 12), value, np.uint8)).save(folder / f"{i}.png")


def test_disk_full_while_the_store_is_built_is_one_line(tmp_path, monkeypatch):
    import dvclust.data.store as st

    _pngs(tmp_path / "imgs", 4, 100)

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(st.os, "fsync", full)
    monkeypatch.chdir(tmp_path)
    line = run("fit", tmp_path / "imgs", "-k", 2, "--size", 16, "--out", "r", "--store",
               tmp_path / "store", code=2)
    assert "building the store failed: No space left on device" in line
    assert not list((tmp_path / "store").glob("*.tmp"))


def test_class_folders_that_are_links_are_followed_and_loops_end(tmp_path):
    from dvclust import load_dataset
    from dvclust.data import ReadOptions

    _pngs(tmp_path / "elsewhere" / "dark", 3, 20)
    _pngs(tmp_path / "data" / "light", 3, 230)
    (tmp_path / "data" / "dark").symlink_to(tmp_path / "elsewhere" / "dark")
    (tmp_path / "data" / "light" / "loop").symlink_to(tmp_path / "data")  # a link loop
    d = load_dataset(tmp_path / "data", options=ReadOptions(size=8), store=tmp_path / "store")
    assert d.class_names == ["dark", "light"] and len(d) == 6


def test_predict_lists_skipped_files_when_the_store_is_reused(digits_run, tmp_path):
    _pngs(tmp_path / "new", 3, 50)
    (tmp_path / "new" / "broken.png").write_bytes(b"")
    run("fit", tmp_path / "new", "-k", 2, "--size", 8, "--out", tmp_path / "r", "-q",
        "--method", "kmeans", "--store", tmp_path / "store")
    for _ in range(2):  # built by the first predict, reused by the second
        out = run("predict", tmp_path / "r", tmp_path / "new", "--out", tmp_path / "p.csv")
        assert "skipped 1 unreadable file(s)" in out
        assert "broken.png" in (tmp_path / "p_skipped.csv").read_text()


def test_export_copy_refuses_a_source_outside_the_data(tmp_path):
    _pngs(tmp_path / "imgs", 4, 90)
    run("fit", tmp_path / "imgs", "-k", 2, "--size", 8, "--out", tmp_path / "r", "-q",
        "--method", "kmeans", "--store", tmp_path / "store")
    lab = tmp_path / "r" / "labels.csv"
    lab.write_text(lab.read_text().replace("0.png", "../../../etc/hostname", 1))
    line = run("export", tmp_path / "r", "--format", "folders", "--copy", "--out", tmp_path / "e",
               code=2)
    assert "'../../../etc/hostname' lies outside the run's data folder" in line


def test_packaging_metadata():
    import importlib.metadata as md

    import dvclust

    meta = md.metadata("dvclust")
    assert md.version("dvclust") == dvclust.__version__
    assert "LICENSE" in (meta.get_all("License-File") or [])
    assert set(meta.get_all("Provides-Extra")) == {"dicom", "nifti", "umap", "test"}
    assert any("Medical" in c for c in meta.get_all("Classifier"))


# ---- exports ----------------------------------------------------------------------------------
def test_exports_decide_files_from_the_data_not_a_hash_in_a_name(tmp_path):
    """A folder whose first file is '#01 scan.png' still exports links to its originals, and a
    folders export leaves the PNGs that an earlier Label Studio export points to in place."""
    from urllib.parse import unquote

    from dvclust import load_dataset

    _pngs(tmp_path / "imgs", 3, 70)
    (tmp_path / "imgs" / "0.png").rename(tmp_path / "imgs" / "#01 scan%20x.png")
    run("fit", tmp_path / "imgs", "-k", 2, "--size", 8, "--out", tmp_path / "r", "-q",
        "--method", "kmeans", "--store", tmp_path / "store")
    tree = tmp_path / "e" / "folders"
    run("export", tmp_path / "r", "--format", "folders", "--out", tmp_path / "e")
    links = sorted(tree.rglob("*.png"))
    assert len(links) == 3 and all(p.is_symlink() for p in links)
    assert any(p.resolve().name == "#01 scan%20x.png" for p in links)
    run("export", tmp_path / "r", "--format", "labelstudio", "--out", tmp_path / "e")
    tasks = json.loads((tmp_path / "e" / "tasks.json").read_text())
    urls = [t["data"]["image"] for t in tasks]
    assert any("%2301%20scan%2520x.png" in u for u in urls)  # '#', ' ' and '%' encoded
    assert all(Path("/" + unquote(u.split("?d=", 1)[1])).is_file() for u in urls)
    # array data: both exports write their own PNGs, and neither moves the other's
    np.save(tmp_path / "a.npy", load_dataset("digits").images[:50])
    run("fit", tmp_path / "a.npy", "-k", 2, "--out", tmp_path / "ra", "-q", "--method", "kmeans")
    run("export", tmp_path / "ra", "--format", "labelstudio", "--out", tmp_path / "ea")
    run("export", tmp_path / "ra", "--format", "folders", "--out", tmp_path / "ea")
    tasks = json.loads((tmp_path / "ea" / "tasks.json").read_text())
    assert all(Path("/" + unquote(t["data"]["image"].split("?d=", 1)[1])).is_file() for t in tasks)
    assert len(list((tmp_path / "ea" / "folders").rglob("*.png"))) == 50


def test_class_names_from_folders_appear_in_labels_metrics_and_report(tmp_path):
    from dvclust.report import build_report

    _pngs(tmp_path / "imgs" / "NORMAL", 4, 30)
    _pngs(tmp_path / "imgs" / "PNEUMONIA", 4, 220)
    run("fit", tmp_path / "imgs", "-k", 2, "--size", 8, "--out", tmp_path / "r", "-q",
        "--method", "kmeans", "--store", tmp_path / "store")
    rows = (tmp_path / "r" / "labels.csv").read_text().splitlines()
    assert rows[1].endswith(",NORMAL") and rows[-1].endswith(",PNEUMONIA")
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert set(m["per_class_recall"]) == {"NORMAL", "PNEUMONIA"}
    html = build_report(tmp_path / "r", sample=8).read_text()
    assert "<th>NORMAL</th>" in html and "<th>PNEUMONIA</th>" in html


def test_resume_refuses_other_read_options(tmp_path):
    _pngs(tmp_path / "imgs" / "a", 4, 30)
    _pngs(tmp_path / "imgs" / "b", 4, 220)
    args = ["fit", tmp_path / "imgs", "-k", 2, "--out", tmp_path / "r", "-q", "--store",
            tmp_path / "store", "--set", "pretrain_epochs=2", "--set", "cluster_epochs=1",
            "--set", "batch_size=4"]
    run(*args, "--size", 16)
    line = run(*args, "--size", 32, "--resume", code=2)
    assert "cannot resume with different read options (size: 16 -> 32)" in line
    run(*args, "--resume")  # the recorded size, unsaid, is fine


def test_choices_are_listed_in_help():
    def help_of(cmd):
        r = CliRunner().invoke(app, [cmd, "--help"], env={"COLUMNS": "400"})
        assert r.exit_code == 0
        return r.output

    assert "dvc|idec|dec|vae-kmeans|ae-kmeans|pca-kmeans|kmeans" in help_of("fit")
    assert "DICOM" in help_of("fit") and "NIfTI" in help_of("fit")
    assert "csv|labelstudio|folders" in help_of("export")
    assert "silhouette|consensus|balance" in help_of("pick")
    assert "--seed" in help_of("suggest-k") and "--quiet" in help_of("predict")


def test_a_log_file_gets_plain_lines_not_bars(tmp_path):
    """`dvclust fit ... > log 2>&1`: one plain line per epoch, no carriage returns or cursor moves."""
    import subprocess
    import sys

    log = tmp_path / "log"
    with open(log, "w") as f:
        p = subprocess.run([sys.executable, "-m", "dvclust", "fit", "digits", "-k", "3", "--out",
                            str(tmp_path / "r"), "--set", "pretrain_epochs=2", "--set",
                            "cluster_epochs=2", "--set", "kmeans_n_init=1"],
                           stdout=f, stderr=subprocess.STDOUT)
    text = log.read_text()
    assert p.returncode == 0, text
    assert "\r" not in text and "\x1b[" not in text
    assert "pretrain epoch 2/2: loss" in text and "cluster epoch 2/2: loss" in text


def test_labelstudio_export_names_a_link_that_leads_outside_the_document_root(tmp_path):
    """A file reached through a link: inside the document root it is exported by its own path;
    outside, the error names the file and where the link leads."""
    from PIL import Image

    from dvclust.curate import _relative_to

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(outside / "a.png")
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(outside / "a.png", root / "link.png")
    assert _relative_to(str(root))(root / "link.png") == "link.png"
    with pytest.raises(DVClustError, match=r"link\.png \(a link to .*elsewhere/a\.png\): lies outside"):
        _relative_to(str(tmp_path / "other"))(root / "link.png")
