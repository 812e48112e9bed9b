"""The resolved configuration of a run: one flat dataclass, YAML in and out, unknown keys rejected.

Flat on purpose: the estimator's keyword arguments, the YAML file and the checkpoint all use the
same names, so there is one place to read what a knob means.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from .data.augment import POLICIES
from .errors import DVClustError

# The methods of the comparison (issue 4) as traits of the one training loop:
# method -> (variational encoder, self-training phase, reconstruction kept while self-training).
# DEC and IDEC use the same conv network as a plain autoencoder (z = mu, no prior KL).
DEEP_METHODS = {
    "dvc": (True, True, True),
    "idec": (False, True, True),
    "dec": (False, True, False),
    "vae-kmeans": (True, False, False),
    "ae-kmeans": (False, False, False),
}
# Phase 3's minimum length under cluster_epochs="auto" (docs/DECISIONS.md, "cluster_epochs"), in
# steps of REFERENCE_BATCH images: a larger batch keeps the images seen, not the step count.
CLUSTER_MIN_STEPS = 4000
# lr: auto (docs/DECISIONS.md, "batch_size and lr"): the method's learning rate at its batch,
# scaled by the square root of the batch ratio above it (Adam's rule).
REFERENCE_BATCH = 256
REFERENCE_LR = 1e-3
# base_channels: auto: the first block's width, narrower from NARROW_FROM_SIDE px a side on
# (docs/DECISIONS.md, "base_channels").
NARROW_FROM_SIDE = 48
AUGMENT_MIN_SIDE = 16          # augment: auto (see the field's comment)
AUGMENT_MIN_BACKGROUND = 0.5
# views / contrastive: auto (docs/DECISIONS.md, "views and contrastive")
AUTO_TWO_VIEWS = ("digits",)   # the augmentation policies that get two views
AUTO_CONTRASTIVE = 0.1         # the weight of NT-Xent with two views
# What a key meant in the runs written before it existed, where its default has changed since:
# read back from such a run (its config.yaml or checkpoint), the key takes this value.
BEFORE_KEY = {"views": 1, "contrastive": 0.0}
# k-means on the pixels, or on their first `latent_dim` principal components: no network at all.
SHALLOW_METHODS = ("kmeans", "pca-kmeans")
METHODS = (*DEEP_METHODS, *SHALLOW_METHODS)
# What a run's config.yaml records beside the settings (the data source, the versions): read
# back as a config (`fit --config RUN/config.yaml`) they are set aside, not refused.
RECORDED_KEYS = ("versions", "data")
METHOD_NAMES = {"dvc": "Deep Variational Clustering", "idec": "IDEC (conv autoencoder)",
                "dec": "DEC (conv autoencoder)", "vae-kmeans": "k-means on VAE latent means",
                "ae-kmeans": "k-means on autoencoder codes", "kmeans": "k-means on pixels",
                "pca-kmeans": "k-means on principal components"}


@dataclass
class Config:
    # --- problem -------------------------------------------------------------------------------
    n_clusters: int = 10
    seed: int = 0
    method: str = "dvc"              # one of METHODS; the others are baselines for comparison
    # --- model (DESIGN.md §1) -------------------------------------------------------------------
    latent_dim: int = 10
    # Width of the first conv block; doubles per block up to 8x. "auto": 32 below NARROW_FROM_SIDE
    # px a side, 16 from there on (docs/DECISIONS.md, "base_channels").
    base_channels: int | str = "auto"
    likelihood: str = "bernoulli"    # "bernoulli" (BCE with logits) or "gaussian" (MSE, unit variance)
    # --- optimisation --------------------------------------------------------------------------
    # Global batch (split over processes) and Adam's learning rate. lr "auto": REFERENCE_LR, times
    # sqrt(batch_size / REFERENCE_BATCH) for a batch above REFERENCE_BATCH.
    batch_size: int = REFERENCE_BATCH
    lr: float | str = "auto"
    # Weight of KL(q(z|x) || N(0, I)): below the ELBO's 1, since a weaker pull to the prior leaves a
    # more clusterable latent space (docs/DECISIONS.md, "beta").
    beta: float = 0.1
    # Reconstruction reduction over pixels: "mean" divides the whole ELBO by C*H*W, so that gamma
    # weighs the clustering KL against a per-pixel reconstruction as IDEC does (docs/DECISIONS.md,
    # "gamma and the ELBO's scale").
    recon_reduction: str = "mean"
    # Augmentation of each batch: a policy of data.augment.POLICIES, "off", or "auto": "digits"
    # (DEC-DA's zero-filled jitter) for an object on an empty field, images of at least
    # AUGMENT_MIN_SIDE px a side of which at least AUGMENT_MIN_BACKGROUND of the pixels are
    # background (< 0.05), else off (docs/DECISIONS.md, "augment"). true = "digits", false = "off".
    augment: bool | str = "auto"
    # 2: every batch is two augmented views of its images, both reconstructed, and in phase 3 the
    # target P of the image is the target of both views' q (view-consistent DVC). 1: one view.
    # "auto": 2 where the augmentation policy in use is one of AUTO_TWO_VIEWS, else 1.
    views: int | str = "auto"
    # With views 2: weight of NT-Xent between the two views' posterior means (SimCLR's instance
    # contrast; the negatives are the other images of the process's own batch), wherever the ELBO
    # is minimised; 0 = off. "auto": AUTO_CONTRASTIVE with two views, 0 with one
    # (docs/DECISIONS.md, "views and contrastive").
    contrastive: float | str = "auto"
    # Weight of the negative entropy of the batch's mean q in phase 3 (SCAN's guard against
    # clusters that empty); 0 = off.
    balance: float = 0.0
    # --- phase 1: variational pretraining ------------------------------------------------------
    pretrain_epochs: int = 50        # maximum
    patience: int = 5                # epochs without a relative improvement of min_delta
    min_delta: float = 1e-3
    # --- phase 2: k-means initialisation -------------------------------------------------------
    kmeans_n_init: int = 10
    kmeans_max_samples: int = 100_000  # above this, k-means runs on a random sample of the latents
    # --- phase 3: joint self-training ----------------------------------------------------------
    # Epoch limit. "auto" = 50 epochs, raised to at least CLUSTER_MIN_STEPS optimiser steps on
    # small sets (docs/DECISIONS.md, "cluster_epochs").
    cluster_epochs: int | str = "auto"
    gamma: float = 0.1               # weight of KL(P || Q)
    # Cluster sizes the target P pulls toward (cluster.target_distribution): "equal" (DEC's) or
    # "kmeans" (the proportions k-means found in phase 2). "equal" splits a dominant class but
    # mends merged balanced ones; "kmeans" suits an archive that is mostly one class
    # (docs/DECISIONS.md, "size_prior").
    size_prior: str = "equal"
    alpha: float = 1.0               # Student-t degrees of freedom
    update_interval: int = 1         # epochs between recomputations of the target P
    tol: float = 0.001               # stop when fewer than this fraction of labels change
    prior_kl_in_clustering: bool = True  # the authors' script drops it (False)
    q_from: str = "mean"             # "mean" (posterior mean) or "sample" (the authors' script)
    # --- runtime -------------------------------------------------------------------------------
    device: str = "auto"             # "auto", "cpu", "cuda", "cuda:1", ...
    num_threads: int = 0             # torch CPU threads; 0 keeps torch's default
    precision: str = "auto"          # "auto" (bf16 autocast on CUDA), "fp32", "bf16"
    # The whole set as one tensor on the device, batches gathered there (no loader, no copy per
    # batch): "auto" = on CUDA for an in-memory set that takes under half the free device memory;
    # true / false force it. The same batches and noise either way (results agree to float
    # rounding, tests/test_estimator.py).
    data_on_device: bool | str = "auto"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def need(cond: bool, key: str, what: str) -> None:
            if not cond:
                raise DVClustError(f"config: {key}={getattr(self, key)!r} is invalid: {what}")

        for key in ("n_clusters", "latent_dim", "batch_size", "kmeans_n_init", "update_interval",
                    "kmeans_max_samples"):
            need(_int(getattr(self, key)) and getattr(self, key) >= 1, key, "expected an integer >= 1")
        need(self.base_channels == "auto" or (_int(self.base_channels) and self.base_channels >= 1),
             "base_channels", "expected an integer >= 1 or 'auto'")
        need(self.lr == "auto" or (_num(self.lr) and self.lr > 0), "lr",
             "expected a number > 0 or 'auto'")
        need(self.cluster_epochs == "auto" or (_int(self.cluster_epochs) and self.cluster_epochs >= 0),
             "cluster_epochs", "expected an integer >= 0 or 'auto'")
        for key in ("pretrain_epochs", "patience", "num_threads", "seed"):
            need(_int(getattr(self, key)) and getattr(self, key) >= 0, key, "expected an integer >= 0")
        need(_num(self.alpha) and self.alpha > 0, "alpha", "expected a number > 0")
        for key in ("beta", "gamma", "tol", "min_delta", "balance"):
            need(_num(getattr(self, key)) and getattr(self, key) >= 0, key, "expected a number >= 0")
        need(self.contrastive == "auto" or (_num(self.contrastive) and self.contrastive >= 0),
             "contrastive", "expected a number >= 0 or 'auto'")
        need(self.method in METHODS, "method", f"use one of {', '.join(METHODS)}")
        need(self.likelihood in ("bernoulli", "gaussian"), "likelihood", "use 'bernoulli' or 'gaussian'")
        need(self.recon_reduction in ("mean", "sum"), "recon_reduction", "use 'mean' or 'sum'")
        need(self.q_from in ("mean", "sample"), "q_from", "use 'mean' or 'sample'")
        need(self.size_prior in ("equal", "kmeans"), "size_prior", "use 'equal' or 'kmeans'")
        need(self.precision in ("auto", "fp32", "bf16"), "precision", "use 'auto', 'fp32' or 'bf16'")
        need(isinstance(self.prior_kl_in_clustering, bool), "prior_kl_in_clustering",
             "expected true or false")
        need(self.augment in (True, False, "auto", "off", *POLICIES), "augment",
             f"use auto, off or one of {', '.join(POLICIES)}")
        need(self.views in (1, 2, "auto") and not isinstance(self.views, bool), "views",
             "expected 1, 2 or 'auto'")
        need(self.contrastive in ("auto", 0) or self.views != 1, "contrastive",
             "needs two views of each image (views: 2)")
        need(self.data_on_device in (True, False, "auto"), "data_on_device",
             "expected true, false or auto")

    @property
    def variational(self) -> bool:
        return DEEP_METHODS.get(self.method, (False,))[0]

    @property
    def self_training(self) -> bool:
        return DEEP_METHODS.get(self.method, (False, False))[1]

    @property
    def recon_in_clustering(self) -> bool:
        return DEEP_METHODS.get(self.method, (False, False, False))[2]

    def base_channels_for(self, shape: tuple[int, int, int]) -> int:
        """The first block's width for images of `shape` (C, H, W)."""
        if self.base_channels != "auto":
            return self.base_channels
        return 16 if min(shape[1:]) >= NARROW_FROM_SIDE else 32

    def cluster_epochs_for(self, steps_per_epoch: int) -> int:
        """The phase-3 epoch limit for a data set of `steps_per_epoch` optimiser steps."""
        if self.cluster_epochs != "auto":
            return self.cluster_epochs
        min_steps = CLUSTER_MIN_STEPS / _batch_ratio(self.batch_size)
        return max(50, math.ceil(min_steps / max(1, steps_per_epoch)))

    def with_lr_resolved(self) -> "Config":
        """This config with `lr: auto` resolved for its batch size."""
        return self if self.lr != "auto" else self.replace(lr=resolved_lr("auto", self.batch_size))

    def augment_for(self, shape: tuple[int, int, int], background: float) -> str | None:
        """The augmentation policy for images of `shape` (C, H, W) of which a fraction
        `background` of the pixels is background (data.augment.background_fraction); None = off."""
        if self.augment != "auto":
            return {True: "digits", False: None, "off": None}.get(self.augment, self.augment)
        side_ok = min(shape[1:]) >= AUGMENT_MIN_SIDE
        return "digits" if side_ok and background >= AUGMENT_MIN_BACKGROUND else None

    def with_views_for(self, policy: str | None) -> "Config":
        """This config with `views` and `contrastive` resolved for the augmentation `policy` in use
        (None = off). Two views need a policy: asked for without one, a DVClustError."""
        views = self.views if self.views != "auto" else 2 if policy in AUTO_TWO_VIEWS else 1
        if views == 2 and policy is None:
            raise DVClustError("views=2 needs an augmentation policy (augment: xray, photo, micro "
                               "or digits); augment is off for these images")
        contrastive = (self.contrastive if self.contrastive != "auto" else
                       AUTO_CONTRASTIVE if views == 2 else 0.0)
        if contrastive and views == 1:
            raise DVClustError(f"contrastive={contrastive} needs two views of each image; views: "
                               "auto chose one for these images: set views: 2 and an augment policy")
        return self.replace(views=views, contrastive=contrastive)

    # --- conversions ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> "Config":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise DVClustError(f"{source}: unknown key(s) {', '.join(unknown)}; "
                               f"known keys are {', '.join(sorted(known))}")
        return cls(**d)

    def replace(self, **changes: Any) -> "Config":
        return Config.from_dict({**self.to_dict(), **changes})

    @classmethod
    def from_saved(cls, d: dict[str, Any], source: str = "config") -> "Config":
        """The config a run wrote (its config.yaml or checkpoint): a key it lacks came after it
        and takes the value that was its behaviour then (BEFORE_KEY), or else its default."""
        return cls.from_dict({**BEFORE_KEY, **d}, source)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "Config":
        data = read_yaml_mapping(path)
        written_by_a_run = any(key in data for key in RECORDED_KEYS)
        for key in RECORDED_KEYS:
            data.pop(key, None)
        return (cls.from_saved if written_by_a_run else cls.from_dict)(data, source=str(path))


def read_yaml_mapping(path: str | Path) -> dict:
    """A YAML file that must hold a mapping, read safely (a `!!python/...` tag is refused, not
    run), every failure one line naming the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise DVClustError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise DVClustError(f"{path}: is a folder, not a YAML config file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DVClustError(f"{path}: cannot be read ({e})") from None
    except yaml.YAMLError as e:
        raise DVClustError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise DVClustError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    return data


def resolved_lr(lr: float | str, batch_size: int) -> float:
    """The learning rate `lr` means at `batch_size` (an explicit number means itself)."""
    return REFERENCE_LR * math.sqrt(_batch_ratio(batch_size)) if lr == "auto" else lr


def _batch_ratio(batch: int) -> float:
    """How many reference batches a batch holds, 1 at or below REFERENCE_BATCH: a smaller batch
    keeps the method's lr and step floor as they were measured."""
    return max(1.0, batch / REFERENCE_BATCH)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v: Any) -> bool:
    """A real, finite number (a YAML `.inf` or `.nan` is not one)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
