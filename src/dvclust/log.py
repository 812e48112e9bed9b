"""The `dvclust` logger: every progress message is one plain line through it; progress bars stay
tqdm's own (on a terminal only). The CLI sets the logger up; a Python user who configured logging
gets the messages through their handlers, and one who did not (DVC(verbose=True) in a notebook)
still sees them as plain lines."""
from __future__ import annotations

import logging

from tqdm.auto import tqdm

logger = logging.getLogger("dvclust")


class _TqdmHandler(logging.Handler):
    """Writes above any progress bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record))
        except Exception:  # noqa: BLE001 - logging must never end a run
            self.handleError(record)


def setup(level: int = logging.INFO) -> None:
    """One plain line per message (no level, no time: the CLI's output is for people)."""
    if not any(isinstance(h, _TqdmHandler) for h in logger.handlers):
        handler = _TqdmHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


def info(msg: str) -> None:
    if not logger.handlers and not logging.getLogger().handlers:
        setup()  # nobody configured logging: show progress as plain lines, as the CLI does
    logger.info(msg)
