import pytest
import yaml

from dvclust import Config, DVClustError
from dvclust.config import AUTO_CONTRASTIVE, BEFORE_KEY


def test_yaml_roundtrip(tmp_path):
    cfg = Config(n_clusters=4, gamma=0.2, augment=False)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({**cfg.to_dict(), "versions": {"torch": "x"}}))
    assert Config.from_yaml(tmp_path / "c.yaml") == cfg


def test_unknown_key_rejected(tmp_path):
    (tmp_path / "c.yaml").write_text("gama: 0.1\n")
    with pytest.raises(DVClustError, match="unknown key.*gama"):
        Config.from_yaml(tmp_path / "c.yaml")


@pytest.mark.parametrize("key, value", [("n_clusters", 0), ("lr", -1.0), ("likelihood", "poisson"),
                                        ("batch_size", 2.5), ("augment", "yes"), ("q_from", "z"),
                                        ("size_prior", "auto"), ("cluster_epochs", "many"),
                                        ("cluster_epochs", -1)])
def test_bad_values(key, value):
    with pytest.raises(DVClustError, match=key):
        Config(**{key: value})


def test_bad_yaml(tmp_path):
    (tmp_path / "c.yaml").write_text("a: [1,\n")
    with pytest.raises(DVClustError, match="not valid YAML"):
        Config.from_yaml(tmp_path / "c.yaml")
    with pytest.raises(DVClustError, match="not found"):
        Config.from_yaml(tmp_path / "missing.yaml")


def test_cluster_epochs_auto_reaches_the_minimum_steps():
    from dvclust.config import CLUSTER_MIN_STEPS

    auto = Config()
    assert auto.cluster_epochs_for(8) == CLUSTER_MIN_STEPS // 8       # digits: 8 steps an epoch
    assert auto.cluster_epochs_for(7) * 7 >= CLUSTER_MIN_STEPS        # rounded up
    assert auto.cluster_epochs_for(274) == 50                         # MNIST-70k: the plain 50
    assert Config(cluster_epochs=3).cluster_epochs_for(8) == 3        # an explicit limit is kept


def test_lr_auto_follows_the_batch():
    """lr auto: the method's 1e-3 at a batch of 256 or less, times the square root of the batch
    ratio above; larger batches keep the phase-3 floor's images seen, smaller ones its steps;
    an explicit lr stands."""
    from dvclust.config import CLUSTER_MIN_STEPS, REFERENCE_LR

    assert Config().with_lr_resolved().lr == REFERENCE_LR
    assert Config(batch_size=32).with_lr_resolved().lr == REFERENCE_LR
    assert Config(batch_size=1024).with_lr_resolved().lr == pytest.approx(2 * REFERENCE_LR)
    assert Config(batch_size=1024, lr=5e-4).with_lr_resolved().lr == 5e-4
    assert Config(batch_size=1024).cluster_epochs_for(10) == CLUSTER_MIN_STEPS // 4 // 10
    assert Config(batch_size=32).cluster_epochs_for(10) == CLUSTER_MIN_STEPS // 10
    for bad in ("auto", 0, True):
        with pytest.raises(DVClustError, match="batch_size"):
            Config(batch_size=bad)
    with pytest.raises(DVClustError, match="lr"):
        Config(lr="fast")


def test_a_run_written_with_a_plain_lr_resumes_under_auto():
    """Resuming compares lr as the number it trains with: a run written when lr was a plain 1e-3
    resumes under `lr: auto` at its batch, and one at another lr is refused with both named."""
    from dvclust.training.checkpoint import check_resumable

    old = {"config": Config(lr=1e-3).to_dict(), "fingerprint": "f", "shape": [1, 8, 8]}
    check_resumable(old, Config().with_lr_resolved(), (1, 8, 8), "f", "ckpt")
    with pytest.raises(DVClustError, match=r"lr: 0.001 -> 0.002"):
        check_resumable(old, Config(batch_size=256, lr=2e-3).with_lr_resolved(), (1, 8, 8), "f", "ckpt")


def test_augment_auto_only_for_objects_on_an_empty_field():
    auto = Config()
    assert auto.augment_for((1, 28, 28), background=0.82)        # MNIST-like: jitter
    assert not auto.augment_for((1, 28, 28), background=0.003)   # an X-ray fills the frame
    assert not auto.augment_for((1, 8, 8), background=0.9)       # too small to resample
    assert Config(augment=True).augment_for((1, 8, 8), background=0.0)
    assert not Config(augment=False).augment_for((1, 28, 28), background=1.0)


def test_augment_policies_and_views():
    assert Config(augment="xray").augment_for((1, 28, 28), background=1.0) == "xray"
    assert Config(augment="off").augment_for((1, 28, 28), background=1.0) is None
    assert Config(augment=True).augment_for((1, 28, 28), background=0.0) == "digits"
    for key, bad in (("augment", "blur"), ("views", 3), ("views", True), ("balance", -1),
                     ("contrastive", -1)):
        with pytest.raises(DVClustError, match=key):
            Config(**{key: bad})
    with pytest.raises(DVClustError, match=r"contrastive=0.1 is invalid: needs two views"):
        Config(views=1, contrastive=0.1)


def test_views_and_contrastive_auto():
    """auto: two views with NT-Xent for the digits policy, one view without it for the others;
    an explicit choice stands, and two views (or NT-Xent) where no views exist is refused."""
    def resolved(policy, **kw):
        cfg = Config(**kw).with_views_for(policy)
        return cfg.views, cfg.contrastive

    assert resolved("digits") == (2, AUTO_CONTRASTIVE)
    assert resolved("photo") == resolved("xray") == resolved(None) == (1, 0)
    assert resolved("photo", views=2) == (2, AUTO_CONTRASTIVE)
    assert resolved("digits", views=1) == (1, 0)
    assert resolved("digits", contrastive=0) == (2, 0)
    with pytest.raises(DVClustError, match="views=2 needs an augmentation policy"):
        resolved(None, views=2)
    with pytest.raises(DVClustError, match="contrastive=0.3 needs two views"):
        resolved("xray", contrastive=0.3)


def test_a_run_written_before_a_key_keeps_its_behaviour(tmp_path):
    """A run's config.yaml or checkpoint that predates `views` resumes and repeats on one view,
    as it was trained; a user's config without the key gets today's default."""
    from dvclust.training.checkpoint import check_resumable, config_of

    old = {k: v for k, v in Config().to_dict().items() if k not in BEFORE_KEY}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({**old, "versions": {"dvclust": "0.1"}}))
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump({"n_clusters": 3}))
    assert Config.from_yaml(tmp_path / "run.yaml").views == 1
    assert Config.from_yaml(tmp_path / "mine.yaml").views == "auto"
    saved = {"config": old, "fingerprint": "f", "shape": [1, 8, 8]}
    assert config_of(saved, "ckpt")[0].contrastive == 0
    check_resumable(saved, Config(views=1, contrastive=0.0), (1, 8, 8), "f", "ckpt")
    with pytest.raises(DVClustError, match=r"views: 1 -> 'auto'"):
        check_resumable(saved, Config(), (1, 8, 8), "f", "ckpt")
