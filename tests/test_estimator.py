import os
import pickle

import numpy as np
import pytest
import torch

from conftest import FAST
from dvclust import DVC, DVClustError, NotFittedError, load_dataset, metrics
from dvclust.io import load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def digits_model(digits):
    # The settings the quality test needs: small batches suit 1,797 images.
    return DVC(10, random_state=0, pretrain_epochs=100, cluster_epochs=50, batch_size=64).fit(digits)


@pytest.mark.slow
def test_digits_quality(digits, digits_model):
    assert metrics.acc(digits.labels, digits_model.labels_) >= 0.75


@pytest.mark.slow
def test_fitted_attributes_and_inference(digits, digits_model):
    m = digits_model
    assert m.labels_.shape == (1797,) and m.cluster_centers_.shape == (10, 10)
    proba = m.predict_proba(digits)
    assert proba.shape == (1797, 10) and np.allclose(proba.sum(1), 1, atol=1e-5)
    assert np.array_equal(m.predict(digits), m.labels_)  # predict on training images = labels_
    assert m.transform(digits).shape == (1797, 10)
    elbo = m.score_samples(digits)
    assert elbo.shape == (1797,) and np.all(np.isfinite(elbo)) and np.all(elbo < 0)
    # raw arrays work the same as ImageData
    assert np.array_equal(m.predict(digits.images[:20]), m.labels_[:20])


def test_same_seed_same_labels(blobs):
    x, _ = blobs
    a = DVC(3, random_state=1, **FAST).fit(x)
    b = DVC(3, random_state=1, **FAST).fit(x)
    assert np.array_equal(a.labels_, b.labels_)
    assert np.array_equal(a.cluster_centers_, b.cluster_centers_)


def test_data_on_device_takes_the_loaders_batches(blobs):
    """The images held as one tensor (data_on_device, the GPU path; forced here on the CPU) give
    the loader's batches in the loader's order with the same noise: the same losses and labels
    (the weights agree to float rounding, not bit for bit)."""
    x, _ = blobs
    a = DVC(3, random_state=1, data_on_device=False, **FAST).fit(x)
    b = DVC(3, random_state=1, data_on_device=True, **FAST).fit(x)
    assert np.array_equal(a.labels_, b.labels_)
    la = [r["loss"] for r in a.history_ if r["phase"] == "pretrain"]
    assert la == pytest.approx([r["loss"] for r in b.history_ if r["phase"] == "pretrain"], rel=1e-6)
    assert np.allclose(a.transform(x), b.transform(x), atol=1e-3)
    with pytest.raises(DVClustError, match="data_on_device"):
        DVC(3, data_on_device="yes", **FAST).fit(x)


def test_not_fitted_and_wrong_shape(blobs):
    x, _ = blobs
    with pytest.raises(NotFittedError):
        DVC(3).predict(x)
    m = DVC(3, **FAST).fit(x)
    with pytest.raises(DVClustError, match="trained on 1x16x16"):
        m.predict(np.zeros((2, 20, 20), np.float32))


def test_k_larger_than_n_and_bad_param(blobs):
    x, _ = blobs
    with pytest.raises(DVClustError, match="n_clusters=200 is larger than the number of images"):
        DVC(200).fit(x)
    with pytest.raises(DVClustError, match="unknown key.*gama"):
        DVC(3, gama=0.1).fit(x)


def test_save_load_roundtrip(tmp_path, blobs):
    x, _ = blobs
    m = DVC(3, **FAST).fit(x)
    m.save(tmp_path / "m.pt")
    m2 = DVC.load(tmp_path / "m.pt")
    assert np.array_equal(m2.predict(x), m.predict(x))
    assert np.allclose(m2.predict_proba(x), m.predict_proba(x))


class _Boom:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_unsafe_and_foreign_checkpoints_refused(tmp_path, blobs):
    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"format": "dvclust-checkpoint", "x": _Boom()}))
    with pytest.raises(DVClustError, match="refused"):
        DVC.load(tmp_path / "evil.pt")
    torch.save({"format": "dvclust-checkpoint", "x": _Boom()}, tmp_path / "evil2.pt")
    with pytest.raises(DVClustError, match="refused"):
        DVC.load(tmp_path / "evil2.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(DVClustError, match="not a dvclust checkpoint"):
        DVC.load(tmp_path / "foreign.pt")
    # a real checkpoint with tampered weights, and a truncated one
    x, _ = blobs
    DVC(3, **FAST).fit(x).save(tmp_path / "m.pt")
    state = load_checkpoint(tmp_path / "m.pt")
    key = next(iter(state["model"]))
    state["model"][key] = torch.zeros(1)
    save_checkpoint(tmp_path / "tampered.pt", {k: v for k, v in state.items()
                                              if k not in ("format", "format_version")})
    with pytest.raises(DVClustError, match="weights do not fit"):
        DVC.load(tmp_path / "tampered.pt")
    raw = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DVClustError, match="refused"):
        DVC.load(tmp_path / "cut.pt")


def test_auto_cluster_epochs_reach_the_minimum_steps(blobs, monkeypatch):
    # 20 images in batches of 32: one step an epoch, so "auto" must run 60 epochs for 60 steps
    monkeypatch.setattr("dvclust.config.CLUSTER_MIN_STEPS", 60)
    x, _ = blobs
    m = DVC(3, random_state=0, pretrain_epochs=1, batch_size=32, kmeans_n_init=1, tol=0.0).fit(x[:20])
    assert sum(r["phase"] == "cluster" for r in m.history_) == 60


# ---- the scikit-learn contract ----------------------------------------------------------------
def test_params_clone_set_params_and_repr():
    from sklearn.base import clone

    from dvclust import Config, KMeansBaseline

    m = DVC(n_clusters=3, beta=0.2)
    assert clone(m).beta == 0.2 and clone(m).n_clusters == 3
    assert m.set_params(beta=0.3) is m and m.beta == 0.3
    assert repr(m) == "DVC(beta=0.3, n_clusters=3)"
    # every Config key is a parameter, with Config's default (random_state is Config's seed)
    params = DVC().get_params()
    cfg = Config().to_dict()
    assert {k: params[k] for k in cfg if k != "seed"} == {k: v for k, v in cfg.items() if k != "seed"}
    assert params["random_state"] == cfg["seed"]
    assert clone(KMeansBaseline(4, method="pca-kmeans")).method == "pca-kmeans"
    from sklearn.base import is_clusterer
    assert is_clusterer(DVC()) and is_clusterer(KMeansBaseline())


def test_in_a_pipeline_and_grid_search(blobs):
    from sklearn.metrics import adjusted_rand_score, make_scorer
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    x, y = blobs
    flat = x.reshape(len(x), -1)  # a pipeline step hands the images on as 16x16 again
    pipe = make_pipeline(FunctionTransformer(lambda a: a.reshape(-1, 16, 16)),
                         DVC(3, random_state=0, **FAST))
    labels = pipe.fit_predict(flat)
    assert labels.shape == (len(x),) and np.array_equal(pipe.predict(flat), labels)
    assert pipe.transform(flat).shape == (len(x), 10)  # the posterior means
    grid = GridSearchCV(DVC(3, random_state=0, **FAST), {"latent_dim": [2, 4]}, cv=2,
                        scoring=make_scorer(adjusted_rand_score)).fit(x, y)
    assert grid.best_params_["latent_dim"] in (2, 4) and grid.best_estimator_.latent_dim in (2, 4)


def test_the_contrastive_term_is_in_the_loss(blobs):
    """contrastive > 0 adds its NT-Xent to the loss of every epoch that keeps the ELBO; at 0 the
    loss is the scaled ELBO alone (16x16 images: scale 1/256, beta 0.1)."""
    x, _ = blobs
    kw = dict(random_state=0, **FAST, views=2, augment="xray")

    def extra(model):  # the loss beyond the ELBO, per pretraining epoch
        return [r["loss"] - (r["recon"] + 0.1 * r["kl"]) / 256 for r in model.history_
                if r["phase"] == "pretrain"]

    assert max(abs(e) for e in extra(DVC(3, contrastive=0, **kw).fit(x))) < 1e-5
    # NT-Xent of 2 x 32 views lies between 0 and log(63): its tenth is well above zero
    assert all(0.01 < e < 0.1 * np.log(63) for e in extra(DVC(3, contrastive=0.1, **kw).fit(x)))


def test_views_auto_follows_the_policy_in_use(blobs, caplog):
    """views and contrastive auto: the digits policy (objects on an empty field) trains on two
    views with NT-Xent, so each pretraining loss holds more than the ELBO; images that leave
    augmentation off train on one view, on the ELBO alone."""
    caplog.set_level("INFO", logger="dvclust")
    x, _ = blobs
    empty = np.where(x > 0.5, x, 0)  # the same squares on a black field: the digits policy
    fit = DVC(3, random_state=0, **FAST, verbose=True).fit(empty)
    assert "views: 2, contrastive: 0.1" in caplog.text
    extra = [r["loss"] - (r["recon"] + 0.1 * r["kl"]) / 256 for r in fit.history_
             if r["phase"] == "pretrain"]
    assert min(extra) > 0.01
    caplog.clear()
    one = DVC(3, random_state=0, **FAST, verbose=True).fit(x)
    assert "augment: auto -> off" in caplog.text and "views: 2" not in caplog.text
    assert max(abs(r["loss"] - (r["recon"] + 0.1 * r["kl"]) / 256) for r in one.history_
               if r["phase"] == "pretrain") < 1e-5
