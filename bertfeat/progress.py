"""Progress on a terminal (count, rate, ETA) and quiet when stderr is not a TTY."""
import sys
import time


class Progress:
    """`with Progress("messages", total) as p: p.update(n)` draws `label: done/total rate/s ETA`."""

    def __init__(self, label, total=None, enabled=None, stream=None):
        self.label, self.total, self.done = label, total, 0
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.start = time.perf_counter()
        self._last_draw = 0.0
        self.status = ""  # shown after the counts (e.g. how many Ray workers)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self._draw(force=True)
            self.stream.write("\n")
            self.stream.flush()

    @property
    def rate(self):
        elapsed = time.perf_counter() - self.start
        return self.done / elapsed if elapsed > 0 else 0.0

    def update(self, n=1):
        self.done += n
        if self.enabled:
            self._draw()

    def _draw(self, force=False):
        now = time.perf_counter()
        if not force and now - self._last_draw < 0.2:
            return
        self._last_draw = now
        rate = self.rate
        if self.total:
            eta = (self.total - self.done) / rate if rate > 0 else float("nan")
            text = f"{self.label}: {self.done}/{self.total} {rate:.1f}/s ETA {eta:.0f}s"
        else:
            text = f"{self.label}: {self.done} {rate:.1f}/s"
        if self.status:
            text += f" ({self.status})"
        self.stream.write("\r" + text.ljust(60))
        self.stream.flush()


def notice(message):
    """A one-line notice for the user, on stderr (kept out of stdout so results stay parseable)."""
    print(f"bertfeat: {message}", file=sys.stderr, flush=True)
