"""User-facing errors: one line that says what was wrong and what to do."""
import contextlib
import sys
from collections.abc import Iterator


class UserError(Exception):
    """Bad input from the user (paths, images, videos, configs, checkpoints).

    `main.py` prints these as a single line and exits with status 2 instead of a traceback.
    The message must name what was wrong and what to do about it.
    """


def fail(message: str) -> None:
    """Prints `error: message` on stderr and exits with status 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    """For command-line entry points: a UserError raised inside ends the program as `main.py`
    does (`fail`)."""
    try:
        yield
    except UserError as error:
        fail(str(error))
