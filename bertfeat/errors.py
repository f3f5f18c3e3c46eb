"""The one exception type a user sees: a single line that says what went wrong and what to do."""


class BertfeatError(Exception):
    """A problem with the user's input or environment, reported as one line (exit status 2)."""
