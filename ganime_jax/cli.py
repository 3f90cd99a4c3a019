"""What `main.py` does between parsing flags and the library: load, check, dispatch."""
import importlib
import pathlib
import sys
from typing import Any

import ml_collections
from absl import flags

from ganime_jax import config_check
from ganime_jax.errors import UserError

# The complete reference config of each stage: every config of that stage has its fields.
REFERENCE_CONFIGS = {"vqgan": "configs.vqgan_kny", "gpt": "configs.gpt_kny"}


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


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with config-file and flag errors turned into one line."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        fail(f"{error}; see --helpshort.")
    except (OSError, SyntaxError, ImportError, AttributeError, KeyError) as error:
        fail(f"cannot load the config: {config_error(error)}")


def load_config(config_flag: Any, filename: str) -> ml_collections.ConfigDict:
    """The parsed `--config` with overrides applied, checked against its stage's reference."""
    try:
        config = config_flag.value
        stage = config.get("stage")
    except (OSError, AttributeError, KeyError, SyntaxError, ImportError) as error:
        raise UserError(f"cannot load the config file {filename}: {config_error(error)}") from None
    if stage not in REFERENCE_CONFIGS:
        raise UserError(f"config.stage is {stage!r}; expected one of {sorted(REFERENCE_CONFIGS)}.")
    reference_module = REFERENCE_CONFIGS[stage]
    reference = importlib.import_module(reference_module).get_config()
    config_check.check_fields(config, reference, reference_module.replace(".", "/") + ".py")
    return config


def default_workdir(config_filename: str) -> str:
    return str(pathlib.Path("workdirs") / pathlib.Path(config_filename).stem)


def run_mode(mode: str, config: ml_collections.ConfigDict, workdir: str,
             **sample_flags: Any) -> None:
    """Runs `mode`; `sample_flags` (first, last, num_frames, output; None = not given) are
    the flags only --mode=sample reads."""
    given = sorted(name for name, value in sample_flags.items() if value is not None)
    if given and mode != "sample":
        raise UserError(f"--{given[0]} only applies to --mode=sample.")
    if mode == "train":
        from ganime_jax.train import entry
        entry.train(config, workdir)
        return
    if mode == "sample":
        from ganime_jax import sample
        sample.run_sample(config, workdir, **sample_flags)
        return
    raise UserError(f"--mode={mode} is not available yet; use --mode=train or --mode=sample.")


def fail(message: str) -> None:
    """Prints `error: message` on stderr and exits with status 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)
