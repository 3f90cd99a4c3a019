"""What `main.py` does between parsing flags and the library: load, check, dispatch."""
import importlib
import pathlib
import sys
from typing import Any

import ml_collections

from ganime_jax import config_check
from ganime_jax.errors import UserError

# The complete reference config of each stage: every config of that stage has its fields.
REFERENCE_CONFIGS = {"vqgan": "configs.vqgan_kny"}


def one_line(error: BaseException) -> str:
    """The first meaningful line of an exception message, without KeyError quoting."""
    text = str(error.args[0] if error.args else error).strip("'\"")
    lines = [line.strip() for line in text.replace("\\n", "\n").splitlines() if line.strip()]
    return " ".join(lines[:2]) if lines else type(error).__name__


def load_config(config_flag: Any) -> ml_collections.ConfigDict:
    """The parsed `--config` with overrides applied, checked against its stage's reference."""
    try:
        config = config_flag.value
    except (OSError, AttributeError, KeyError, SyntaxError, ImportError) as error:
        raise UserError(f"cannot load the config: {one_line(error)}") from None
    stage = config.get("stage")
    if stage not in REFERENCE_CONFIGS:
        raise UserError(f"config.stage is {stage!r}; expected one of {sorted(REFERENCE_CONFIGS)}.")
    reference_module = REFERENCE_CONFIGS[stage]
    reference = importlib.import_module(reference_module).get_config()
    config_check.check_fields(config, reference, reference_module.replace(".", "/") + ".py")
    return config


def default_workdir(config_filename: str) -> str:
    return str(pathlib.Path("workdirs") / pathlib.Path(config_filename).stem)


def run_mode(mode: str, config: ml_collections.ConfigDict, workdir: str) -> None:
    if mode == "train":
        from ganime_jax.train import entry
        entry.train(config, workdir)
        return
    raise UserError(f"--mode={mode} is not available yet: it arrives with the GPT stage; "
                    "use --mode=train.")


def fail(message: str) -> None:
    """Prints `error: message` on stderr and exits with status 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)
