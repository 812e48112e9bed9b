"""The comparison's table logic (bench/bench_methods.py), on made-up rows: no training."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bench_methods as bm  # noqa: E402


def test_parse_run_keeps_brackets_and_rejects_missing_seed():
    assert bm.parse_run("mnist:dvc[beta=1,q_from=sample]:2") == ("mnist", "dvc[beta=1,q_from=sample]", 2)
    with pytest.raises(SystemExit, match="DATASET:METHOD:SEED"):
        bm.parse_run("mnist:dvc")


def test_is_default_compares_overrides_with_the_config():
    assert bm.is_default("dvc") and bm.is_default("dvc[beta=0.1]") and bm.is_default("idec")
    assert not bm.is_default("dvc[beta=0.01]")
    assert not bm.is_default("dvc[augment=false]")  # explicit, not "auto"


def _row(ds, method, seed, nmi, device="cpu"):
    return {"dataset": ds, "method": method, "seed": seed, "nmi": nmi, "stamp": {"device": device}}


def test_head_to_head_pools_default_spellings_and_flags_clear_gaps():
    rows = [_row("a", "dvc", s, v) for s, v in enumerate([0.50, 0.52, 0.51])]
    rows += [_row("a", "dvc[beta=0.1]", s, v, "NVIDIA H200") for s, v in enumerate([0.53, 0.49, 0.50])]
    rows += [_row("a", "dec", s, v) for s, v in enumerate([0.30, 0.31, 0.29])]
    rows += [_row("a", "dec[gamma=5]", s, 0.99) for s in range(3)]  # an ablation, not DEC's default
    rows += [_row("b", "dvc", s, v) for s, v in enumerate([0.50, 0.60, 0.40])]
    rows += [_row("b", "idec", s, v) for s, v in enumerate([0.52, 0.45, 0.58])]
    a, b = bm.head_to_head(rows)
    assert a.startswith("| a | 0.508 (6) | dec | 0.300 (3) | +0.208 |") and a.endswith("| ahead |")
    assert b.startswith("| b | 0.500 (3) | idec | 0.517 (3) | -0.017 |") and b.endswith("| within 2 SE |")


def test_devices_column():
    assert bm.devices([_row("a", "dvc", 0, 0.5)]) == "CPU"
    assert bm.devices([_row("a", "dvc", 0, 0.5), _row("a", "dvc", 1, 0.5, "NVIDIA H200"),
                       _row("a", "dvc", 2, 0.5, "NVIDIA H200")]) == "CPU 1, H200 2"


def test_phase3_table_compares_start_best_and_end():
    rows = [{**_row("a", "dvc", 0, 0.40), "nmi_path": [[0, 0.50], [1, 0.60], [2, 0.45]]},
            {**_row("a", "dvc", 1, 0.70), "nmi_path": [[0, 0.50], [1, 0.55], [2, 0.65], [3, 0.70]]},
            {**_row("a", "kmeans", 0, 0.30), "nmi_path": None},        # no phase 3
            {**_row("a", "vae-kmeans", 0, 0.30), "nmi_path": [[0, 0.30]]},
            _row("a", "idec", 0, 0.35)]                                 # a row from before the path
    assert bm.phase3(rows) == ["| a | dvc | 2 | 0.500 | 0.650 (epoch 2) | 0.550 | 1 of 2 |"]


def test_seed_agreement_pairs_each_method_with_its_kmeans_start(tmp_path, monkeypatch):
    import numpy as np

    monkeypatch.setattr(bm, "RESULTS", tmp_path)
    truth = np.repeat(np.arange(3), 20)
    rng = np.random.default_rng(0)
    rows = []
    for s in range(3):
        for method, labels, nmi in (("vae-kmeans", rng.permutation(truth), 0.1), ("dvc", truth, 0.9),
                                    ("idec", truth, 0.8)):  # idec's start (ae-kmeans) was not run
            p = bm.labels_path("t", "a", method, s)
            p.parent.mkdir(parents=True, exist_ok=True)
            np.save(p, labels)
            rows.append(_row("a", method, s, nmi))
    (line,) = bm.seed_agreement(rows, "t")
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[:4] == ["a", "dvc", "vae-kmeans", "3"]
    assert float(cells[4]) < 0.2 and cells[5] == "1.00"
    assert cells[6:] == ["0.100", "0.900", "+0.800"]
