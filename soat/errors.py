"""The one error type users see for their own mistakes."""


class SoatError(ValueError):
    """A user-facing error: its message names the problem and the fix."""
