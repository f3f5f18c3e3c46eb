"""The one exception type a user sees: a single line that says what went wrong and what to do."""
import contextlib
import contextvars

_FROM_CLI = contextvars.ContextVar("bertfeat_from_cli", default=False)


class BertfeatError(Exception):
    """A problem with the user's input or environment, reported as one line (exit status 2)."""


def first_line(e, limit=None):
    """The first line of an exception's message (its class name when it has none), at most
    `limit` characters: what a one-line error quotes of a library's error."""
    text = str(e).strip()
    line = text.splitlines()[0] if text else type(e).__name__
    return line[:limit] if limit else line


DEVICES = ("cpu", "cuda", "auto")


def unknown_device(device):
    return BertfeatError(f"unknown --device {device!r}: choose {', '.join(DEVICES[:-1])} or {DEVICES[-1]}")


def param(flag, value=None):
    """A setting as the user writes it: on the command line the flag (`--precision`, or
    `--precision fp32` with a value), from Python the keyword (`precision`, `precision='fp32'`);
    a switch's value is True (`--overwrite` / `overwrite=True`)."""
    name = flag.lstrip("-")
    if _FROM_CLI.get():
        return flag if value is None or value is True else f"{flag} {value}"
    return name if value is None else f"{name}={value!r}"


@contextlib.contextmanager
def from_cli():
    """Within it, errors name flags, not keywords (the command line's run)."""
    token = _FROM_CLI.set(True)
    try:
        yield
    finally:
        _FROM_CLI.reset(token)
