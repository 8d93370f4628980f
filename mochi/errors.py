"""The one exception type a user can cause.

Every problem a user can fix (missing data, bad option, wrong checkpoint) is raised as
:class:`MochiError` with a message that names the problem *and* the fix. The CLI turns it into a
one-line ``Error: ...`` and a non-zero exit, never a traceback.
"""


class MochiError(Exception):
    """A user-facing error: ``str(err)`` names the problem and how to fix it."""


class ConfigError(MochiError):
    """A bad value in a config dataclass: ``field`` is the field's name, ``message`` says what is wrong.

    The library words ``message`` in field names (``seeds: give distinct seeds``); a command-line layer
    catches it and names the option the user typed instead.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message

    def __str__(self) -> str:
        return self.message
