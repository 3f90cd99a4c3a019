"""`python -m data_prep.tokens`: encode a clips dataset into a video-token dataset.

    python -m data_prep.tokens --tokenizer_workdir=workdirs/vqgan_demo --data_root=datasets \
        --dataset=synthetic_anime

The encoding is `ganime_jax.train.token_dataset`'s (resumable, written atomically).
"""
from collections.abc import Sequence

from absl import flags

from ganime_jax.commands import run_command
from ganime_jax.data import tfds_io
from ganime_jax.errors import UserError
from ganime_jax.train.token_dataset import (DEFAULT_BATCH_SIZE, DEFAULT_CLIPS_PER_SHARD,
                                            build_token_dataset)

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The CLI flags, defined only when run as a script."""
    flags.DEFINE_string("tokenizer_workdir", None, "Stage-1 (VQ-GAN) workdir: its newest "
                        "checkpoint encodes the clips.")
    flags.DEFINE_string("data_root", "datasets", "Folder that holds the datasets.")
    flags.DEFINE_string("dataset", None, "Reads {dataset}_clips, writes {dataset}_tokens.")
    flags.DEFINE_integer("batch_size", DEFAULT_BATCH_SIZE,
                         "Frames per encoding batch (a multiple of the device count).")
    flags.DEFINE_integer("clips_per_shard", DEFAULT_CLIPS_PER_SHARD,
                         "Clips per staged shard (the unit a re-run resumes from).")


def main(argv: Sequence[str]) -> None:
    del argv
    if not FLAGS.tokenizer_workdir or not FLAGS.dataset:
        raise UserError("--tokenizer_workdir and --dataset are required.")
    path = build_token_dataset(FLAGS.data_root, FLAGS.dataset, FLAGS.tokenizer_workdir,
                               batch_size=FLAGS.batch_size, clips_per_shard=FLAGS.clips_per_shard)
    name = tfds_io.variant_name(FLAGS.dataset, "tokens")
    print(f"wrote {path}: {tfds_io.dataset_summary(FLAGS.data_root, name)}")


if __name__ == "__main__":
    define_flags()
    run_command(main)
