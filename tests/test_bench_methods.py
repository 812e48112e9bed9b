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
    return {"dataset": ds, "method": method, "seed": seed, "nmi": nmi, "device": device}


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
