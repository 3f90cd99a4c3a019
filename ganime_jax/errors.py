"""User-facing errors: one line that says what was wrong and what to do."""


class UserError(Exception):
    """Bad input from the user (paths, images, videos, configs, checkpoints).

    `main.py` prints these as a single line and exits with status 2 instead of a traceback.
    The message must name what was wrong and what to do about it.
    """
