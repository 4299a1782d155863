"""One logger for the package; only the main process speaks at INFO. Progress bars that share the console.

Log lines go through ``tqdm.write``, so a line printed while a progress bar is drawn lands above the
bar instead of glued to it. On a terminal :func:`progress_bar` is a tqdm bar; when stderr is a file or a
CI log (not a terminal) it writes ordinary log lines instead (one per ``set_postfix``, i.e. per
``--logging_steps``, and at most every ``log_interval_s`` otherwise), not a line per bar refresh.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def get_logger(name: str) -> logging.Logger:
    """Logger under the ``hfssl`` namespace."""
    if not name.startswith("hfssl"):
        name = f"hfssl.{name}"
    return logging.getLogger(name)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted, not the one at set-up time, so a
    later ``contextlib.redirect_stderr`` (or pytest's capture) still sees the log and no closed stream is hit.
    Writes through ``tqdm.write``: an active progress bar is cleared, the line printed, the bar redrawn."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm.auto import tqdm

            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


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


# ------------------------------------------------------------------------------------------ progress
def _draws_bars(stream: Any) -> bool:
    """A terminal (or a notebook, where tqdm.auto draws widgets) can redraw a bar in place."""
    if "ipykernel" in sys.modules:
        return True
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def progress_bar(iterable: Any = None, *, total: int | None = None, initial: int = 0, desc: str = "", unit: str = "it",
                 disable: bool = False, log_interval_s: float = 30.0, tqdm_class: Any = None,
                 **tqdm_kwargs: Any) -> Any:
    """A progress bar with tqdm's interface (``update``, ``set_postfix``, ``close``, context manager).

    Wraps ``iterable`` when given, as tqdm does. A tqdm bar (``tqdm_class``, default ``tqdm.auto.tqdm``)
    when stderr is a terminal; otherwise a
    :class:`LogProgress`, which logs a line per ``set_postfix`` call and one at least every
    ``log_interval_s`` seconds of updates, so a redirected log gets readable lines, not bar refreshes.
    """
    if _draws_bars(sys.stderr):
        if tqdm_class is None:
            from tqdm.auto import tqdm as tqdm_class
        return tqdm_class(iterable, total=total, initial=initial, desc=desc, unit=unit, disable=disable,
                          **tqdm_kwargs)
    # tqdm reads TQDM_DISABLE itself (setup_logging sets it on non-main ranks); the log lines honour it too.
    disable = disable or os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes")
    return LogProgress(iterable, total=total, initial=initial, desc=desc, unit=unit, disable=disable,
                       log_interval_s=log_interval_s)


class LogProgress:
    """Progress as log lines (``hfssl.progress`` at INFO), for a stderr that is not a terminal."""

    def __init__(self, iterable: Any = None, *, total: int | None = None, initial: int = 0, desc: str = "",
                 unit: str = "it", disable: bool = False, log_interval_s: float = 30.0) -> None:
        self.iterable = iterable
        self.total, self.n, self.initial = total, initial, initial
        self.desc, self.unit, self.disable = desc, unit, disable
        self.log_interval_s = log_interval_s
        self.postfix = ""
        self.start = self._last_line = time.perf_counter()
        self._last_n = initial
        self._logger = get_logger("hfssl.progress")

    def __iter__(self) -> Any:
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()  # not on an error: the error line is what the user needs to see last

    def update(self, n: int = 1) -> None:
        self.n += n
        if not self.disable and time.perf_counter() - self._last_line >= self.log_interval_s:
            self._line()

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        values = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())
        if refresh and not self.disable:
            self._line()

    def set_description(self, desc: str = "", refresh: bool = True) -> None:
        self.desc = desc

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        if not self.disable and self.n != self._last_n:
            self._line()
        self.disable = True  # closing twice (context manager, then close()) logs once

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _line(self) -> None:
        from tqdm import tqdm

        now = time.perf_counter()
        elapsed = now - self.start
        done = self.n - self.initial
        rate = done / elapsed if elapsed > 0 else 0.0
        unit = self.unit.strip()
        text = f"{self.desc}: " if self.desc else ""
        if self.total:
            text += f"{self.n}/{self.total} ({100 * self.n / self.total:.0f}%)"
        else:
            text += f"{self.n:,} {unit}"
        text += f", {tqdm.format_interval(elapsed)} elapsed"
        if self.total and rate > 0 and self.n < self.total:
            text += f", {tqdm.format_interval((self.total - self.n) / rate)} left"
        if rate >= 100:
            text += f", {rate:,.0f} {unit}/s"
        elif rate >= 1:
            text += f", {rate:.3g} {unit}/s"
        elif rate > 0:
            text += f", {1 / rate:.3g} s/{unit}"
        if self.postfix:
            text += f" | {self.postfix}"
        self._logger.info(text)
        self._last_line, self._last_n = now, self.n
