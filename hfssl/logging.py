"""One logger for the package; only the main process speaks at INFO."""

from __future__ import annotations

import logging
import os
import sys

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def get_logger(name: str) -> logging.Logger:
    """Logger under the ``hfssl`` namespace."""
    if not name.startswith("hfssl"):
        name = f"hfssl.{name}"
    return logging.getLogger(name)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted, not the one at set-up time, so a
    later ``contextlib.redirect_stderr`` (or pytest's capture) still sees the log and no closed stream is hit."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(is_main_process: bool = True, level: int | None = None) -> None:
    """Configure the ``hfssl`` logger and quiet the libraries on non-main ranks.

    Non-main ranks log warnings only, so a multi-process run prints each message once.
    """
    if level is None:
        level = logging.INFO if is_main_process else logging.WARNING
    root = logging.getLogger("hfssl")
    if not root.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
        root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
    import datasets
    import transformers

    lib_level = logging.WARNING if is_main_process else logging.ERROR
    transformers.utils.logging.set_verbosity(lib_level)
    datasets.utils.logging.set_verbosity(lib_level)
    if not is_main_process:
        # Progress bars from other ranks would interleave with the main one.
        datasets.disable_progress_bars()
        os.environ.setdefault("TQDM_DISABLE", "1")
