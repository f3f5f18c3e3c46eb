"""Progress: count, rate and ETA on a terminal; silent when not a TTY."""
import io

import pytest

from bertfeat.progress import Progress

pytestmark = pytest.mark.unit


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_shows_count_rate_and_eta_on_a_terminal():
    out = Terminal()
    with Progress("messages", 10, stream=out) as bar:
        for _ in range(10):
            bar.update(1)
    last = out.getvalue().split("\r")[-1]
    assert "messages: 10/10" in last and "/s" in last and "ETA" in last


def test_progress_is_quiet_in_logs():
    out = io.StringIO()
    with Progress("messages", 10, stream=out) as bar:
        bar.update(10)
    assert out.getvalue() == ""
