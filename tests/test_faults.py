"""A full disk or an unwritable output folder: a clear error, and the last good checkpoint intact."""
import errno
import os
import subprocess
import sys

import pytest

from conftest import FAST
from dvclust import DVC, DVClustError
from dvclust import io as dio
from dvclust.io import load_checkpoint


def test_disk_full_mid_run_keeps_last_checkpoint(tmp_path, blobs, monkeypatch):
    x, _ = blobs
    run = tmp_path / "run"
    real_fsync, calls = os.fsync, {"n": 0}

    def fsync_that_fills_up(fd):
        calls["n"] += 1
        if calls["n"] > 4:  # checkpoint + history for two epochs, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(dio.os, "fsync", fsync_that_fills_up)
    with pytest.raises(DVClustError, match="No space left on device.*previous version is kept"):
        DVC(3, random_state=2, **FAST).fit(x, run_dir=run)
    monkeypatch.undo()
    state = load_checkpoint(run / "checkpoint.pt")["state"]
    assert (state["phase"], state["epoch"]) == ("pretrain", 2)
    assert not [p for p in os.listdir(run) if p.endswith(".tmp")]  # no half-written files
    resumed = DVC(3, random_state=2, **FAST).fit(x, run_dir=run, resume=True)
    full = DVC(3, random_state=2, **FAST).fit(x, run_dir=tmp_path / "full")
    assert (resumed.labels_ == full.labels_).all()


def test_unwritable_output_folder_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("a file, not a folder")
    p = subprocess.run([sys.executable, "-m", "dvclust", "fit", "digits", "-k", "3",
                        "--out", str(tmp_path / "afile" / "run"), "-q"],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "cannot write output here" in p.stderr and "afile" in p.stderr
