"""The error type of every problem a user can fix (bad config, bad data file, bad argument).

Front ends print a `UserError` as one line (no traceback); its message names the key, file or trial and says what
was expected. It is a ValueError, so existing ``except ValueError`` handlers keep working.
"""


class UserError(ValueError):
    """A problem in the user's input (config key, data file, argument); the message says what was expected."""
