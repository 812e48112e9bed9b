import os
from pathlib import Path

import numpy as np
import pytest

SHARED = Path(os.environ.get("DVCLUST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def shared(rel: str) -> Path:
    p = SHARED / rel
    if not p.exists():
        pytest.skip(f"shared data not found: {p}")
    return p


@pytest.fixture(autouse=True)
def _fresh_logger():
    """Each test starts with the dvclust logger as a library user finds it: the CLI's setup() in a
    test or a module fixture (plain lines, no propagation) must not hide messages from caplog."""
    import logging

    from dvclust.log import logger

    logger.handlers.clear()
    logger.setLevel(logging.NOTSET)
    logger.propagate = True
    yield


@pytest.fixture
def blobs():
    """Three easy clusters of 16x16 gray images: a bright square in one of three places."""
    rng = np.random.default_rng(0)
    n = 90
    x = rng.uniform(0, 0.1, size=(n, 16, 16)).astype(np.float32)
    y = np.repeat(np.arange(3), n // 3)
    for i, c in enumerate(y):
        r = 2 + 5 * c
        x[i, r:r + 4, r:r + 4] = 0.9
    return x, y


def cli(*args) -> str:
    """Run `dvclust ARGS` in this process; it must succeed. Returns its output."""
    from typer.testing import CliRunner

    from dvclust.cli import app

    r = CliRunner().invoke(app, list(map(str, args)))
    assert r.exit_code == 0, r.output + r.stderr
    return r.output


# Small, quick settings for fits in tests.
FAST = dict(pretrain_epochs=3, cluster_epochs=2, batch_size=32, kmeans_n_init=2)
