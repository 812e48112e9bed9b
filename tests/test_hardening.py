"""Bad input is one line naming the file or value (exit 2), never a traceback (issue 17's cases),
run in-process with typer's CliRunner."""
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
