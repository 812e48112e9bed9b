import csv
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from dvclust import DVClustError
from dvclust.choose_k import describe, sweep_k


def test_sweep_finds_separated_blobs():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 10, (4, 5))
    z = np.concatenate([c + rng.normal(0, 0.5, (200, 5)) for c in centres]).astype(np.float32)
    res = sweep_k(z, 2, 8, seed=0)
    assert res["k"] == 4 and res["clarity"] == "clear"
    assert [r["k"] for r in res["rows"]] == list(range(2, 9))
    assert "suggested K = 4" in describe(res)
    with pytest.raises(DVClustError, match="K range"):
        sweep_k(z, 1, 5)


def test_fit_clusters_auto(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 0.1, size=(300, 16, 16)).astype(np.float32)
    for i in range(300):
        r = 2 + 5 * (i % 3)
        x[i, r:r + 4, r:r + 4] = 0.9
    np.save(tmp_path / "b.npy", x)
    run = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "dvclust", "fit", str(tmp_path / "b.npy"), "-k", "auto",
                        "--k-range", "2", "6", "--out", str(run), "-q", "--set", "pretrain_epochs=5",
                        "--set", "cluster_epochs=2", "--set", "batch_size=32"],
                       capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert p.returncode == 0, p.stderr[-2000:]
    assert "suggested K = " in p.stdout
    k = yaml.safe_load((run / "config.yaml").read_text())["n_clusters"]
    assert k == 3 and f"into {k} clusters" in p.stdout  # three well-separated blobs
    with open(run / "labels.csv") as f:
        labels = [int(r["cluster"]) for r in csv.DictReader(f)]
    assert len(labels) == 300 and max(labels) < k
    with open(run / "suggest_k.csv") as f:
        assert [int(r["k"]) for r in csv.DictReader(f)] == [2, 3, 4, 5, 6]
    bad = subprocess.run([sys.executable, "-m", "dvclust", "fit", "digits", "-k", "many", "--out",
                          str(tmp_path / "x")], capture_output=True, text=True)
    assert bad.returncode == 2 and "expected a whole number or 'auto'" in bad.stderr
