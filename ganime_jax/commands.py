"""Command-line plumbing shared by `main.py` and every `python -m ...` command: absl flag
parsing and the one-line `error:` exit for bad flags, configs and user errors."""
from collections.abc import Callable

from absl import app, flags

from ganime_jax.errors import exit_on_user_error, fail


def config_error(error: BaseException) -> str:
    """One line out of the multi-line, quoted messages that config loading raises."""
    error = error.__cause__ or error
    if isinstance(error, SyntaxError):
        return f"{error.msg} ({error.filename}, line {error.lineno})"
    text = str(error.args[0] if error.args else error)
    if len(text) > 1 and text[0] in "'\"" and text[-1] == text[0]:  # a KeyError's repr
        text = text[1:-1]
    text = text.replace("\\n", "\n").replace("\\'", "'")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def run_command(main: Callable[[list[str]], None]) -> None:
    """`app.run(main)` for the `python -m ...` commands: a flag error, a stray argument or a
    UserError raised by `main` ends as one `error:` line with exit status 2."""
    def checked(argv: list[str]) -> None:
        if len(argv) > 1:
            fail(f"unexpected arguments {argv[1:]}; flags look like --name=value.")
        with exit_on_user_error():
            main(argv)
    app.run(checked, flags_parser=parse_flags)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with config-file and flag errors turned into one line."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        fail(f"{error}; see --helpshort.")
    except (OSError, SyntaxError, ImportError, AttributeError, KeyError) as error:
        fail(f"cannot load the config: {config_error(error)}")
