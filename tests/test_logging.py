"""Console output: log lines never glue onto a progress bar; a redirected log gets lines, not bar redraws."""

from __future__ import annotations

import io
import re

import pytest

from hfssl.logging import LogProgress, get_logger, progress_bar, setup_logging


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def hfssl_logs():
    setup_logging()
    yield get_logger("test_console")


def test_a_log_line_during_a_bar_starts_on_its_own_line(monkeypatch, hfssl_logs):
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    bar = progress_bar(total=10, desc="train", unit="step", file=terminal, mininterval=0)
    bar.update(3)
    hfssl_logs.info("saved checkpoint step_3")
    bar.update(1)
    bar.close()
    out = terminal.getvalue()
    before, after = out.split("saved checkpoint step_3")
    # tqdm.write clears the bar (a carriage return, blanks, a carriage return) before the line, then redraws it.
    assert "3/10" in before and after.startswith("\n")
    assert re.fullmatch(r"\d\d:\d\d:\d\d INFO hfssl.test_console: ", before.rsplit("\r", 1)[1])
    assert "4/10" in after


def test_without_a_terminal_progress_is_log_lines_at_each_postfix(monkeypatch, hfssl_logs):
    redirected = io.StringIO()  # a file or a CI log: isatty() is False
    monkeypatch.setattr("sys.stderr", redirected)
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    bar = progress_bar(total=100, desc="train", unit="step", log_interval_s=3600)
    assert isinstance(bar, LogProgress)
    with bar:
        for step in range(1, 101):
            bar.update(1)
            if step % 25 == 0:
                bar.set_postfix(loss=f"{5 - step / 50:.4f}")
    lines = redirected.getvalue().splitlines()
    assert "\r" not in redirected.getvalue() and len(lines) == 4
    assert [line.split("hfssl.progress: ")[1].split(",")[0] for line in lines] == [
        "train: 25/100 (25%)", "train: 50/100 (50%)", "train: 75/100 (75%)", "train: 100/100 (100%)"]
    assert lines[0].endswith("| loss=4.5000") and "step/s" in lines[0]


def test_without_a_terminal_an_iterable_logs_on_a_timer_and_at_the_end(monkeypatch, hfssl_logs):
    redirected = io.StringIO()
    monkeypatch.setattr("sys.stderr", redirected)
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert list(progress_bar(range(1000), desc="training tokenizer", unit=" docs", log_interval_s=3600)) == list(
        range(1000))
    lines = redirected.getvalue().splitlines()
    assert len(lines) == 1 and "training tokenizer: 1,000 docs" in lines[0]
    monkeypatch.setenv("TQDM_DISABLE", "1")  # other ranks (setup_logging sets it there): silent
    list(progress_bar(range(10), desc="quiet"))
    assert redirected.getvalue().splitlines() == lines

