"""An interrupted run, resumed, ends exactly where an uninterrupted run ends (CPU, one seed)."""
import numpy as np
import pytest

from conftest import FAST
from dvclust import DVC, DVClustError
from dvclust.io import load_checkpoint, save_checkpoint

PARAMS = dict(FAST, cluster_epochs=3, tol=0.0)


@pytest.mark.parametrize("stop_phase, stop_epoch, extra", [
    ("pretrain", 2, {}), ("cluster", 0, {}), ("cluster", 1, {}),
    ("cluster", 1, {"size_prior": "kmeans"}),  # the k-means sizes must survive in the checkpoint
])
def test_resume_gives_same_labels(tmp_path, blobs, stop_phase, stop_epoch, extra):
    x, _ = blobs
    x = x[15:]  # 15 / 30 / 30 images: unequal sizes, so that the size prior is not uniform
    full = DVC(3, random_state=5, **PARAMS, **extra).fit(x, run_dir=tmp_path / "full")
    cut = DVC(3, random_state=5, **PARAMS, **extra).fit(
        x, run_dir=tmp_path / "cut",
        _stop_after=lambda s: s.phase == stop_phase and s.epoch == stop_epoch)
    assert not hasattr(cut, "labels_")
    state = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["state"]
    assert state["phase"] == stop_phase
    assert (state["prior"] is not None) == bool(extra)

    resumed = DVC(3, random_state=5, **PARAMS, **extra).fit(x, run_dir=tmp_path / "cut", resume=True)
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


def test_resume_a_checkpoint_from_before_a_config_key_existed(tmp_path, blobs):
    """Upgrading dvclust mid-run must not strand the run: a key added since (size_prior, say) is
    missing from the old checkpoint's config and its state, and takes its default."""
    x, _ = blobs
    DVC(3, **PARAMS).fit(x, run_dir=tmp_path / "r", _stop_after=lambda s: s.phase == "cluster")
    ckpt = tmp_path / "r" / "checkpoint.pt"
    saved = load_checkpoint(ckpt)
    del saved["config"]["size_prior"], saved["state"]["prior"]
    save_checkpoint(ckpt, saved)
    assert DVC(3, **PARAMS).fit(x, run_dir=tmp_path / "r", resume=True).labels_.shape == (len(x),)
