"""`python -m data_prep.embedded`: build an embedded dataset (synthetic anime, Moving MNIST).

    python -m data_prep.embedded --dataset synthetic_anime --data_root datasets

The builders are `ganime_jax.data.embedded`'s; one flag per builder parameter.
"""
import inspect
from collections.abc import Sequence

from absl import flags

from ganime_jax import writable
from ganime_jax.commands import run_command
from ganime_jax.data.embedded import BUILDERS
from ganime_jax.errors import UserError

FLAGS = flags.FLAGS


_FLAG_HELP = {
    "seed": "Seed of the whole build.",
    "num_train_episodes": "synthetic_anime: train episodes.",
    "num_test_episodes": "synthetic_anime: test episodes.",
    "num_validation_episodes": "synthetic_anime: validation episodes (0: no validation split).",
    "num_extra_train_episodes": "synthetic_anime: train episodes rendered after the held-out ones.",
    "shots_per_episode": "synthetic_anime: shots per episode.",
    "min_drawings": "synthetic_anime: fewest drawings in a shot.",
    "max_drawings": "synthetic_anime: most drawings in a shot.",
    "height": "synthetic_anime: frame height.",
    "width": "synthetic_anime: frame width.",
    "min_frames": "synthetic_anime: shortest clip (kept frames).",
    "max_frames": "synthetic_anime: longest clip.",
    "held_threshold": "synthetic_anime: held-frame threshold ([0, 1] pixels).",
    "num_train_clips": "moving_mnist: train clips.",
    "num_test_clips": "moving_mnist: test clips.",
    "num_validation_clips": "moving_mnist: validation clips (0: no validation split).",
    "num_frames": "moving_mnist: frames per clip.",
    "size": "moving_mnist: frame height and width.",
    "num_digits": "moving_mnist: digits per clip.",
}


def define_flags() -> None:
    """The CLI flags, defined only when run as a script (importers keep their own flags).

    One flag per builder parameter, with the builder's default.
    """
    flags.DEFINE_enum("dataset", None, sorted(BUILDERS), "Which embedded dataset to build.")
    flags.DEFINE_string("data_root", None, "Folder that holds the datasets.")
    flags.DEFINE_string("name", None, "Dataset name prefix (default: the --dataset name).")
    for builder in BUILDERS.values():
        for param in inspect.signature(builder).parameters.values():
            if param.name in FLAGS or param.name in ("data_root", "name"):
                continue
            define = flags.DEFINE_float if isinstance(param.default, float) else flags.DEFINE_integer
            define(param.name, param.default, _FLAG_HELP[param.name])

def main(argv: Sequence[str]) -> None:
    del argv
    if not FLAGS.dataset or not FLAGS.data_root:
        raise UserError("--dataset and --data_root are required; see --helpshort.")
    builder = BUILDERS[FLAGS.dataset]
    params = set(inspect.signature(builder).parameters) - {"data_root", "name"}
    settings = {p: FLAGS[p].value for p in params}
    writable.check_folder(FLAGS.data_root, "--data_root")
    counts = builder(FLAGS.data_root, FLAGS.name or FLAGS.dataset, **settings)
    print(f"built {FLAGS.name or FLAGS.dataset} in {FLAGS.data_root}: {counts}")


if __name__ == "__main__":
    define_flags()
    run_command(main)
