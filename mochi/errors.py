"""The exception types a user can cause.

Every problem a user can fix (missing data, bad option, wrong checkpoint) is raised as
:class:`MochiError` with a message that names the problem *and* the fix. The CLI turns it into a
one-line ``Error: ...`` and a non-zero exit, never a traceback.

An impossible configuration value is a :class:`ConfigError`: it names the dataclass *field*
(``queue_size``), and the message reads after that name (``"must be positive, got 0"``). The library
knows fields, not flags; the CLI maps the field back to the flag the user typed
(``--moco-k must be positive, got 0``). Other fields a message mentions are written in backquotes
(```batch_size```) so the CLI can name their flags too.
"""


class MochiError(Exception):
    """A user-facing error: ``str(err)`` names the problem and how to fix it."""


class ConfigError(MochiError):
    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message
