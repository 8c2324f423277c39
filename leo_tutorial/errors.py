"""Errors a user can cause (bad files, impossible episode shapes, invalid numbers).

The CLI prints a :class:`UserError` as one line (no traceback) and exits non-zero, so every
message names the problem *and* the fix.
"""


class UserError(ValueError):
    """A mistake the user can fix; the message says how."""
