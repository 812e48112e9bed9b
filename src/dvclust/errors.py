"""The one exception type users see: a one-line message naming the file or value at fault."""


class DVClustError(Exception):
    """Bad input or state, reported as one clear line (the CLI prints it without a traceback)."""


class NotFittedError(DVClustError, AttributeError):
    """Raised when predict/transform is called before fit (scikit-learn's contract)."""
