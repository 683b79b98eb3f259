"""One error type for everything a user can get wrong.

The CLI catches :class:`UserError` and prints its message on one line with a non-zero exit;
anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input from the user: message says what, where (file/line/field) and the fix."""
