"""An interrupted run, resumed, ends exactly where an uninterrupted run ends (CPU, one seed)."""
import numpy as np
import pytest

from conftest import FAST
from dvclust import DVC, DVClustError
from dvclust.io import load_checkpoint

PARAMS = dict(FAST, cluster_epochs=3, tol=0.0)


@pytest.mark.parametrize("stop_phase, stop_epoch", [("pretrain", 2), ("cluster", 0), ("cluster", 1)])
def test_resume_gives_same_labels(tmp_path, blobs, stop_phase, stop_epoch):
    x, _ = blobs
    full = DVC(3, random_state=5, **PARAMS).fit(x, run_dir=tmp_path / "full")
    cut = DVC(3, random_state=5, **PARAMS).fit(
        x, run_dir=tmp_path / "cut",
        _stop_after=lambda s: s.phase == stop_phase and s.epoch == stop_epoch)
    assert not hasattr(cut, "labels_")
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["state"]["phase"] == stop_phase

    resumed = DVC(3, random_state=5, **PARAMS).fit(x, run_dir=tmp_path / "cut", resume=True)
    assert np.array_equal(resumed.labels_, full.labels_)
    assert np.allclose(resumed.cluster_centers_, full.cluster_centers_)
    assert len(resumed.history_) == len(full.history_)


def test_resume_refuses_changed_config_or_data(tmp_path, blobs):
    x, _ = blobs
    DVC(3, **FAST).fit(x, run_dir=tmp_path / "r")
    with pytest.raises(DVClustError, match="different config.*gamma"):
        DVC(3, **dict(FAST, gamma=0.5)).fit(x, run_dir=tmp_path / "r", resume=True)
    with pytest.raises(DVClustError, match="different data"):
        DVC(3, **FAST).fit(x[::-1].copy(), run_dir=tmp_path / "r", resume=True)
    with pytest.raises(DVClustError, match="nothing to resume"):
        DVC(3, **FAST).fit(x, run_dir=tmp_path / "empty", resume=True)
