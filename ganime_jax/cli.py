"""What `main.py` does between parsing flags and the library: load, check, dispatch."""
import dataclasses
import pathlib
import types
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from ganime_jax import config_check, writable
from ganime_jax.commands import config_error
from ganime_jax.errors import UserError

def load_config(config_flag: Any, filename: str,
                references: Mapping[str, types.ModuleType]) -> ml_collections.ConfigDict:
    """The parsed `--config` with overrides applied, checked against its stage's reference.

    references: per `config.stage`, the config module whose `get_config()` has every field a
    config of that stage must have (main.py passes configs/vqgan_kny.py and gpt_kny.py; the
    library imports no config).
    """
    try:
        config = config_flag.value
        stage = config.get("stage")
    except (OSError, AttributeError, KeyError, SyntaxError, ImportError) as error:
        raise UserError(f"cannot load the config file {filename}: {config_error(error)}") from None
    if stage not in references:
        raise UserError(f"config.stage is {stage!r}; expected one of {sorted(references)}.")
    module = references[stage]
    config_check.check_fields(config, module.get_config(),
                              module.__name__.replace(".", "/") + ".py")
    return config


def default_workdir(config_filename: str) -> str:
    return str(pathlib.Path("workdirs") / pathlib.Path(config_filename).stem)


@dataclasses.dataclass(frozen=True)
class Run:
    """What a mode runs on: the config, the workdir and (sample only) the end frames."""

    config: ml_collections.ConfigDict
    workdir: str
    first: str | None = None
    last: str | None = None


def resolve_run(mode: str, config_flag: Any, *, workdir: str | None, bundle_dir: str | None,
                first: str | None, last: str | None, bundle_overrides: Sequence[str] = (),
                references: Mapping[str, types.ModuleType] | None = None) -> Run:
    """The run that the flags name (`config_flag`: absl's `--config` flag object).

    `--mode=sample`, `eval` or `demo` with neither --config nor --workdir runs an inference
    bundle (`bundle_dir`, default `bundle.DEMO_BUNDLE`): its GPT config and workdir, for sample
    and demo its example frames unless --first/--last are given; eval takes `bundle_overrides`
    (`--config.evaluate.*` / `--config.sample.*` arguments) and writes outside the bundle.
    Otherwise `--config` (default: main.py's) is loaded and checked against `references`
    (see `load_config`), and the workdir defaults to workdirs/<config file name>.
    """
    if mode in ("sample", "eval", "demo") and not config_flag.present and workdir is None:
        from ganime_jax import bundle
        overrides = list(bundle_overrides) + [f"--config.{name}"
                                              for name in config_flag.override_values]
        if mode in ("sample", "demo"):
            if overrides:
                raise UserError(f"{overrides[0].split('=')[0]} needs --config=FILE: the config of "
                                "a bundle takes no overrides when sampling; pass --config and "
                                "--workdir of a stage-2 run instead.")
            run = bundle.load_sample_run(bundle_dir or bundle.DEMO_BUNDLE)
            if first is None and last is None:
                first, last = str(run.first), str(run.last)
            return Run(run.config, str(run.workdir), first, last)
        run = bundle.load_eval_run(bundle_dir or bundle.DEMO_BUNDLE, overrides)
        return Run(run.config, str(run.workdir), first, last)
    if bundle_dir is not None:
        raise UserError("--bundle only applies to --mode=sample, eval and demo without "
                        "--config and --workdir.")
    filename = config_flag.config_filename
    config = load_config(config_flag, filename, references or {})
    return Run(config, workdir or default_workdir(filename), first, last)


# The flags only some modes read, and those modes.
MODE_FLAGS = {"first": ("sample", "demo"), "last": ("sample", "demo"), "num_frames": ("sample",),
              "output": ("sample",), "port": ("demo",)}


def run_mode(mode: str, config: ml_collections.ConfigDict, workdir: str,
             **mode_flags: Any) -> None:
    """Runs `mode`; `mode_flags` (first, last, num_frames, output, port; None = not given) are
    the flags that only the modes of MODE_FLAGS read."""
    for name in sorted(name for name, value in mode_flags.items() if value is not None):
        if mode not in MODE_FLAGS[name]:
            raise UserError(f"--{name} only applies to "
                            + " and ".join(f"--mode={m}" for m in MODE_FLAGS[name]) + ".")
    sample_flags = {name: mode_flags.get(name) for name in ("first", "last", "num_frames",
                                                            "output")}
    if mode == "train":
        writable.check_folder(workdir, "--workdir")
        from ganime_jax.train import entry
        entry.train(config, workdir)
        return
    if mode == "sample":
        from ganime_jax import sample
        sample.run_sample(config, workdir, **sample_flags)
        return
    if mode == "eval":
        from ganime_jax.evaluation import run
        run.run_eval(config, workdir)
        return
    if mode == "demo":
        from ganime_jax import web_demo
        first, last = mode_flags.get("first"), mode_flags.get("last")
        if (first is None) != (last is None):
            raise UserError("give both --first and --last (the example pair), or neither.")
        web_demo.serve(config, workdir, port=mode_flags.get("port"),
                       example=(first, last) if first is not None else None)
        return
    raise UserError(f"--mode={mode} is unknown; use --mode=train, sample, eval or demo.")
