"""User-facing errors: one line that says what was wrong and what to do."""
import contextlib
from collections.abc import Iterator


class UserError(Exception):
    """Bad input from the user (paths, images, videos, configs, checkpoints).

    `main.py` prints these as a single line and exits with status 2 instead of a traceback.
    The message must name what was wrong and what to do about it.
    """


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    """For command-line entry points: a UserError raised inside ends the program as `main.py`
    does (`ganime_jax.cli.fail`: `error: <message>` on stderr, exit status 2)."""
    try:
        yield
    except UserError as error:
        from ganime_jax.cli import fail  # here, not at the top: cli imports this module
        fail(str(error))
