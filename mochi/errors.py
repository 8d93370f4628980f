"""The one exception type a user can cause.

Every problem a user can fix (missing data, bad option, wrong checkpoint) is raised as
:class:`MochiError` with a message that names the problem *and* the fix. The CLI turns it into a
one-line ``Error: ...`` and a non-zero exit, never a traceback.
"""


class MochiError(Exception):
    """A user-facing error: ``str(err)`` names the problem and how to fix it."""
