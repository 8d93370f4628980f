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

_WORKER_PREFIX = "Caught MochiError in DataLoader worker"
_ORIGINAL = "MochiError: "


class MochiError(Exception):
    """A user-facing error: ``str(err)`` names the problem and how to fix it.

    Raised inside a DataLoader worker, torch re-raises it in the main process with the worker's whole
    traceback as the message; the original one-line message is kept instead.
    """

    def __init__(self, message: str = "") -> None:
        if isinstance(message, str) and message.startswith(_WORKER_PREFIX) and _ORIGINAL in message:
            message = message.rsplit(_ORIGINAL, 1)[1].strip()
        super().__init__(message)


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
