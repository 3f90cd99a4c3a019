"""`python -m data_prep.candidates`: draw a candidates dataset with a bundle's GPT.

    python -m data_prep.candidates --bundle=ganime_jax/assets/moving_mnist --data_root=datasets \
        --num_clips=train:1024 --num_clips=validation:256

The drawing is `ganime_jax.candidate_dataset`'s (resumable, written atomically): the training
data of a stage-3 refiner with `config.model.candidate_statistics`.
"""
from collections.abc import Sequence

from absl import flags

from ganime_jax import candidate_dataset
from ganime_jax.commands import run_command
from ganime_jax.data import tfds_io
from ganime_jax.errors import UserError

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The CLI flags, defined only when run as a script."""
    flags.DEFINE_string("bundle", None, "Inference bundle whose GPT draws the candidates (its "
                        "sample config: K candidates kept by their medoid).")
    flags.DEFINE_string("data_root", "datasets", "Folder that holds {dataset}_clips.")
    flags.DEFINE_multi_string("num_clips", None, "SPLIT:COUNT, once per split to draw, e.g. "
                              "train:1024 and validation:256.")
    flags.DEFINE_integer("clips_per_shard", candidate_dataset.DEFAULT_CLIPS_PER_SHARD,
                         "Clips per staged shard (the unit a re-run resumes from).")
    flags.DEFINE_integer("draw_batch_size", candidate_dataset.DEFAULT_DRAW_BATCH_SIZE,
                         "Clips drawn together.")
    flags.DEFINE_integer("seed", candidate_dataset.DEFAULT_SEED, "Seed of the draws.")


def parse_num_clips(values: Sequence[str] | None) -> dict[str, int]:
    """["train:1024", ...] -> {"train": 1024, ...}; a one-line error for anything else."""
    if not values:
        raise UserError("--num_clips is required, once per split: e.g. --num_clips=train:1024 "
                        "--num_clips=validation:256.")
    counts = {}
    for value in values:
        split, _, count = value.partition(":")
        if not split or not count.isdigit() or split in counts:
            raise UserError(f"--num_clips={value!r}: give SPLIT:COUNT (a positive integer), "
                            "once per split, e.g. --num_clips=train:1024.")
        counts[split] = int(count)
    return counts


def main(argv: Sequence[str]) -> None:
    del argv
    if not FLAGS.bundle:
        raise UserError("--bundle is required: the inference bundle whose GPT draws.")
    counts = parse_num_clips(FLAGS.num_clips)
    path = candidate_dataset.build_candidate_dataset(
        FLAGS.bundle, FLAGS.data_root, counts, clips_per_shard=FLAGS.clips_per_shard,
        draw_batch_size=FLAGS.draw_batch_size, seed=FLAGS.seed)
    print(f"wrote {path}: {tfds_io.dataset_summary(FLAGS.data_root, path.name)}")


if __name__ == "__main__":
    define_flags()
    run_command(main)
