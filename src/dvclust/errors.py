"""The one exception type users see: a one-line message naming the file or value at fault."""
from sklearn.exceptions import NotFittedError as _SklearnNotFitted


class DVClustError(Exception):
    """Bad input or state, reported as one clear line (the CLI prints it without a traceback)."""


class NotFittedError(DVClustError, _SklearnNotFitted):
    """Raised when predict/transform is called before fit (scikit-learn's own NotFittedError, so
    that code written for scikit-learn catches it)."""
