"""The baselines of the comparison (issue 4): one contract, the traits each method must have, and
the label-free choice among runs."""
import shutil

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA

from conftest import FAST
from dvclust import DVC, DVClustError, KMeansBaseline, NotFittedError, load_model, make_estimator
from dvclust.config import METHODS
from dvclust.select import agreement, balance, consensus_scores, pick, silhouette


@pytest.fixture(scope="module")
def small():
    from dvclust import load_dataset

    d = load_dataset("digits")
    return d.images[:400], d.labels[:400]


@pytest.mark.parametrize("method", METHODS)
def test_every_method_keeps_the_contract(method, small, tmp_path):
    x, y = small
    est = make_estimator(method, 5, random_state=0, **FAST).fit(x)
    assert est.labels_.shape == (400,) and est.cluster_centers_.shape[0] == 5
    assert np.array_equal(est.predict(x), est.labels_)  # predict on the training images = labels_
    proba = est.predict_proba(x)
    assert proba.shape == (400, 5) and np.allclose(proba.sum(1), 1, atol=1e-5)
    det = est.predict_details(x)
    assert np.all(np.isfinite(det["outlier_score"])) and np.all(det["confidence"] <= 1)
    est.save(tmp_path / "m.pt")
    back = load_model(tmp_path / "m.pt")
    assert type(back) is type(est) and back.config_.method == method
    assert np.array_equal(back.predict(x), est.labels_)


def test_phases_per_method(small):
    x, _ = small
    phases = {m: {r["phase"] for r in make_estimator(m, 5, **FAST).fit(x).history_}
              for m in ("vae-kmeans", "ae-kmeans", "dec")}
    assert "cluster" not in phases["vae-kmeans"] and "cluster" not in phases["ae-kmeans"]
    assert "cluster" in phases["dec"]


def test_autoencoders_have_no_prior_kl_and_dec_drops_the_decoder(small):
    x, _ = small
    idec = DVC(5, method="idec", **FAST).fit(x)
    assert all(r["kl"] == 0 for r in idec.history_ if r.get("kl") is not None)
    assert not idec.model_.vae.variational
    # DEC: self-training moves the encoder, never the decoder's weights
    torch.manual_seed(0)
    dec = DVC(5, method="dec", **{**FAST, "cluster_epochs": 0}).fit(x)
    before = {k: v.clone() for k, v in dec.model_.vae.decoder.named_parameters()}
    enc_before = {k: v.clone() for k, v in dec.model_.vae.encoder.named_parameters()}
    dec2 = DVC(5, method="dec", **FAST).fit(x)  # same seed: same pretraining, then 2 epochs
    after = dict(dec2.model_.vae.decoder.named_parameters())
    assert all(torch.equal(before[k], after[k]) for k in before)
    enc_after = dict(dec2.model_.vae.encoder.named_parameters())
    assert not all(torch.equal(enc_before[k], enc_after[k]) for k in enc_before)


def test_pixel_baselines_match_scikit_learn(small):
    x, _ = small
    flat = x.reshape(len(x), -1).astype(np.float32) / (255.0 if x.dtype == np.uint8 else 1.0)
    km = KMeansBaseline(5, random_state=3, method="kmeans", kmeans_n_init=4).fit(x)
    ref = KMeans(5, n_init=4, random_state=3).fit(flat.astype(np.float64))
    assert np.array_equal(km.labels_, ref.labels_)
    pk = KMeansBaseline(5, random_state=3, method="pca-kmeans", latent_dim=6).fit(x)
    pca = PCA(6, random_state=3).fit(flat)
    z = pk.transform(x)
    assert z.shape == (400, 6) and np.allclose(np.abs(z), np.abs(pca.transform(flat)), atol=1e-3)
    err = ((pca.inverse_transform(pca.transform(flat)) - flat) ** 2).sum(1)
    assert np.allclose(pk.predict_details(x)["outlier_score"], err, rtol=1e-3, atol=1e-4)


def test_method_errors(small):
    x, _ = small
    with pytest.raises(DVClustError, match="method='svm' is invalid"):
        make_estimator("svm", 3).fit(x)
    with pytest.raises(DVClustError, match="use DVC"):
        KMeansBaseline(3, method="dvc").fit(x)
    with pytest.raises(NotFittedError):
        KMeansBaseline(3).predict(x)


def test_consensus_picks_the_run_the_others_agree_with():
    rng = np.random.default_rng(0)
    truth = np.repeat(np.arange(4), 50)
    same = (truth + 1) % 4                       # the same partition, other ids
    noisy = truth.copy()
    noisy[rng.choice(200, 5, replace=False)] = 0   # close to the truth
    merged = np.where(truth == 3, 2, truth)        # two classes merged: the odd one out
    s = consensus_scores([merged, truth, same, noisy])
    assert pick(s) in (1, 2) and np.argmin(s) == 0
    assert np.isclose(s[1], s[2])                # relabelling does not change a score
    assert pick(np.array([0.5, 0.5])) == 0       # ties go to the earliest run
    assert agreement([truth, same]) == pytest.approx(1.0)
    assert agreement([truth, rng.permutation(truth), rng.permutation(truth)]) < 0.1
    assert agreement([truth, same, noisy]) > agreement([merged, truth, noisy])
    with pytest.raises(DVClustError, match="at least 2"):
        consensus_scores([truth])
    with pytest.raises(DVClustError, match="different numbers"):
        consensus_scores([truth, truth[:10]])


def test_silhouette_prefers_the_true_partition():
    rng = np.random.default_rng(0)
    z = np.concatenate([rng.normal(c, 0.3, (60, 2)) for c in (0, 5, 10)])
    truth = np.repeat(np.arange(3), 60)
    assert silhouette(z, truth) > silhouette(z, rng.permutation(truth)) + 0.5
    assert silhouette(z, np.zeros(180, int)) == -1.0


def test_balance_penalises_merged_clusters():
    truth = np.repeat(np.arange(4), 50)
    merged = np.where(truth == 3, 2, truth)
    assert balance(truth, 4) == pytest.approx(1.0)
    assert balance(merged, 4) < 0.9 and balance(np.zeros(10, int), 4) == 0.0


def test_pick_command(tmp_path):
    from typer.testing import CliRunner

    from dvclust.cli import app

    runs = []
    for s in (0, 1, 2):
        r = tmp_path / f"s{s}"
        res = CliRunner().invoke(app, ["fit", "digits", "-k", "5", "--out", str(r), "-q", "--seed",
                                       str(s), "--method", "kmeans", "--set", "kmeans_n_init=1"])
        assert res.exit_code == 0, res.output
        runs.append(str(r))
    for rule in ("consensus", "balance", "silhouette"):
        res = CliRunner().invoke(app, ["pick", *runs, "--rule", rule])
        assert res.exit_code == 0, res.output
        assert res.output.count("->") == 1 and "chosen:" in res.output
        assert "agreement between the runs:" in res.output
    # a run whose labels are shuffled disagrees with the others: pick says so
    shuffled = tmp_path / "shuffled"
    shutil.copytree(runs[0], shuffled)
    lines = (shuffled / "labels.csv").read_text().splitlines()
    col = lines[0].split(",").index("cluster")
    rows = [ln.split(",") for ln in lines[1:]]
    for row, c in zip(rows, np.random.default_rng(0).permutation([r[col] for r in rows])):
        row[col] = c
    (shuffled / "labels.csv").write_text("\n".join([lines[0], *map(",".join, rows)]) + "\n")
    calm = CliRunner().invoke(app, ["pick", runs[0], runs[0], "--rule", "consensus"])
    assert "agreement between the runs: 1.00" in calm.output and "disagree" not in calm.output
    res = CliRunner().invoke(app, ["pick", runs[0], str(shuffled), "--rule", "consensus"])
    assert res.exit_code == 0 and "the runs disagree" in res.output, res.output
    res = CliRunner().invoke(app, ["pick", runs[0]])
    assert res.exit_code == 2 and "at least 2" in res.output
