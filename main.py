"""ganime-jax entry point: `python main.py --config=configs/X.py --workdir=DIR --mode=train`.

`python main.py --mode=sample` with neither --config nor --workdir generates a clip with the
demo models shipped in ganime_jax/assets/demo (or the bundle that --bundle names) between the
bundle's example frames (or --first/--last), written under workdirs/<bundle name>_sample/.
`python main.py --mode=eval [--bundle=DIR] [--config.evaluate.num_clips=N]` evaluates a bundle
the same way (the embedded test clips are built if missing), written under
workdirs/<bundle name>_eval/. `python main.py --mode=demo [--port=N]` serves a web page that
generates in-betweens of uploaded frames, on 127.0.0.1 only.

Errors caused by the user's input (paths, configs, data) are printed as one line and exit 2.
"""

import os
import sys

from absl import app, flags, logging

# Beside this file, so that `python path/to/main.py` works from any directory.
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs",
                              "vqgan_demo.py")
MODES = ("train", "sample", "eval", "demo")
# modes that run a bundle when neither --config nor --workdir
BUNDLE_MODES = ("sample", "eval", "demo")


def _take_bundle_overrides(argv: list[str]) -> list[str]:
    """A bundle run's `--config.x=v` arguments, removed from `argv`: they apply to the bundle's
    config, not to DEFAULT_CONFIG (to which ml_collections would apply them at parse time)."""
    args = argv[1:]
    names = {arg.split("=", 1)[0] for arg in args}
    modes = [arg.split("=", 1)[1] for arg in args if arg.startswith("--mode=")]
    modes += [args[i + 1] for i, arg in enumerate(args[:-1]) if arg == "--mode"]
    if names & {"--config", "--workdir"} or not set(modes) & set(BUNDLE_MODES):
        return []
    overrides = [arg for arg in args if arg.startswith("--config.")]
    for arg in overrides:
        argv.remove(arg)
    return overrides


_BUNDLE_OVERRIDES = _take_bundle_overrides(sys.argv)


def _define_config_flag():
    # ml_collections parses `--config.a.b=v` overrides while the flag is being defined, so a
    # typo in an override surfaces here, before absl can report it.
    from ml_collections import config_flags
    try:
        return config_flags.DEFINE_config_file(
            "config", DEFAULT_CONFIG, "Experiment config file (a .py with get_config()).",
            lock_config=True)
    except (AttributeError, KeyError) as error:
        from ganime_jax.commands import config_error
        from ganime_jax.errors import fail
        fail(f"bad --config override: {config_error(error)}")
    except (OSError, SyntaxError, ImportError) as error:  # the file itself, read for the overrides
        from ganime_jax.commands import config_error
        from ganime_jax.errors import fail
        fail(f"cannot load the config: {config_error(error)}")


_define_config_flag()
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, logs, samples. "
                               "Defaults to workdirs/<config file name>.")
_MODE = flags.DEFINE_enum("mode", "train", MODES, "What to do.")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Join the other processes of a multi-process "
                               "run first (one process per host or GPU): TPU pods, SLURM and "
                               "mpirun are detected; elsewhere give the next three flags.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "multihost: HOST:PORT of "
                                   "process 0 (default: $JAX_COORDINATOR_ADDRESS or detected).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "multihost: processes in the run "
                                      "(default: $JAX_NUM_PROCESSES or detected).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "multihost: this process's index in "
                                   "[0, num_processes) (default: $JAX_PROCESS_ID or detected).")
_FIRST = flags.DEFINE_string("first", None, "sample: image file of the first frame.")
_LAST = flags.DEFINE_string("last", None, "sample: image file of the last frame.")
_NUM_FRAMES = flags.DEFINE_integer("num_frames", None, "sample: frames of the generated clip, "
                                   "first and last included (default: config.sample.num_frames).")
_BUNDLE = flags.DEFINE_string("bundle", None, "sample, eval, demo: the inference bundle (from "
                               "`python -m ganime_jax.export`) used when neither --config nor "
                               "--workdir is given; default: the shipped demo, "
                               "ganime_jax/assets/demo.")
_PORT = flags.DEFINE_integer("port", None, "demo: the port on 127.0.0.1 to serve the page on "
                             "(default 7860).")
_OUTPUT = flags.DEFINE_string("output", None, "sample: path of the MP4 to write (a GIF goes "
                              "beside it); default: <output_dir or workdir/samples>/*.mp4.")


def main(argv: list[str]) -> None:
    if not flags.FLAGS["verbosity"].present:  # library INFO logs (orbax, tfds) drown progress
        logging.set_verbosity(logging.WARNING)
    from ganime_jax import cli
    from ganime_jax.errors import UserError, fail
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}; flags look like --name=value.")
    try:
        if _MULTIHOST.value:
            from ganime_jax import multihost
            multihost.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
        elif any(f.value is not None for f in (_COORDINATOR, _NUM_PROCESSES, _PROCESS_ID)):
            raise UserError("--coordinator_address, --num_processes and --process_id need "
                            "--multihost.")
        from configs import gpt_kny, refiner_demo, vqgan_kny
        # The complete reference config of each stage: every config of it has these fields.
        references = {"vqgan": vqgan_kny, "gpt": gpt_kny, "refiner": refiner_demo}
        run = cli.resolve_run(_MODE.value, flags.FLAGS["config"], workdir=_WORKDIR.value,
                              bundle_dir=_BUNDLE.value, first=_FIRST.value, last=_LAST.value,
                              bundle_overrides=_BUNDLE_OVERRIDES, references=references)
        cli.run_mode(_MODE.value, run.config, run.workdir, first=run.first, last=run.last,
                     num_frames=_NUM_FRAMES.value, output=_OUTPUT.value, port=_PORT.value)
    except UserError as error:
        logging.flush()
        fail(str(error))


if __name__ == "__main__":
    from ganime_jax.commands import parse_flags
    app.run(main, flags_parser=parse_flags)
