"""Errors a user can cause.

Anything raised as `UserError` is printed by the CLI as one line and exits non-zero, with no
traceback: the message itself must name the key, file or row that is wrong.
"""


class UserError(Exception):
    """Bad input from the user: a config key, a file, a row, an impossible setting."""
