"""dvclust: Deep Variational Clustering for self-labelling large collections of medical images."""

__version__ = "0.1.0"

from . import metrics  # noqa: E402
from .config import Config  # noqa: E402
from .data import ImageData, load_dataset  # noqa: E402
from .errors import DVClustError, NotFittedError  # noqa: E402
from .estimators import DVC, KMeansBaseline, load_model, make_estimator  # noqa: E402

__all__ = ["DVC", "KMeansBaseline", "make_estimator", "load_model", "Config", "ImageData", "load_dataset", "metrics", "DVClustError",
           "NotFittedError", "__version__"]
