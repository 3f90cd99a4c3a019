"""Convert a PyTorch VQ-GAN checkpoint into a stage-1 workdir that the tokenizer loads.

    python -m ganime_jax.convert --from=torchganime --checkpoint=vqgan.ckpt \
        --config=configs/vqgan_torchganime.py --out=workdirs/torchganime_vqgan
    python -m ganime_jax.convert --from=taming --checkpoint=last.ckpt \
        --config=configs/vqgan_taming_f16.py --out=DIR [--prefix=first_stage_model.]

The checkpoint (`.safetensors`, or a torch `.ckpt/.pt` read with weights_only=True) must hold
taming-transformers' module names (TorchGANime keeps them). Every key and shape is checked
against the model of `--config` before anything is written; the config must carry the
original's constants (`model.norm_eps`, `model.output_tanh` and taming's layer kinds: see
FROM_SETTINGS). The output holds the VQ-GAN's parameters only (no discriminator, no
optimiser) and its config, written to a temporary folder, read back through the tokenizer
loader, then renamed to `--out`; give it as `config.tokenizer.workdir` of a stage-2 config.
"""
import pathlib
from collections.abc import Sequence

import jax
import numpy as np
from absl import flags
from ml_collections import config_flags

from ganime_jax import checkpointing, writable
from ganime_jax.commands import run_command
from ganime_jax.convert.taming import load_taming_checkpoint
from ganime_jax.errors import UserError
from ganime_jax.models.vqgan import VQGAN
from ganime_jax.tokenizer import GEN_PARAMS, load_tokenizer

# The constants each original sets that its checkpoint's numbers depend on.
TAMING_LAYERS = {"downsample": "strided_conv", "upsample": "nearest_conv",
                 "scaled_attention": True, "attention_placement": "taming"}
FROM_SETTINGS = {
    "taming": {"norm_eps": 1e-6, "output_tanh": False, **TAMING_LAYERS},
    "torchganime": {"norm_eps": 6.1e-5, "output_tanh": False, **TAMING_LAYERS},
}
STEP = 0  # the step the converted checkpoint is saved as

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_enum("from", None, sorted(FROM_SETTINGS), "Which code wrote the checkpoint.")
    flags.DEFINE_string("checkpoint", None, "The .safetensors or .ckpt/.pt file.")
    config_flags.DEFINE_config_file("config", None, "The stage-1 config of the same model "
                                    "(e.g. configs/vqgan_torchganime.py).", lock_config=True)
    flags.DEFINE_string("out", None, "The workdir to write.")
    flags.DEFINE_string("prefix", "", "Key prefix of the VQ-GAN inside the state dict.")
    flags.DEFINE_bool("overwrite", False, "Replace an existing converted workdir at --out.")


def check_config(config, source: str) -> None:
    """The config is a stage-1 config with the constants of `source`."""
    if config.get("stage") != "vqgan":
        raise UserError(f"--config must be a stage-1 (vqgan) config, got stage "
                        f"{config.get('stage')!r}.")
    for field, value in FROM_SETTINGS[source].items():
        if config.model.get(field) != value:
            raise UserError(f"{source} checkpoints need model.{field}={value!r}, the config says "
                            f"{config.model.get(field)!r}; pass --config.model.{field}={value} (or "
                            "--config=configs/vqgan_torchganime.py for TorchGANime's vqgan.yaml, "
                            "configs/vqgan_taming_f16.py for taming's ImageNet f16 model).")


def _summary(params: dict) -> str:
    parts = []
    for module, subtree in params.items():
        leaves = jax.tree.leaves(subtree)
        parts.append(f"{module} {len(leaves)} tensors / {sum(int(np.size(x)) for x in leaves):,}")
    return "; ".join(parts)


def convert(source: str, checkpoint: str, config, out: str | pathlib.Path, *, prefix: str = "",
            overwrite: bool = False) -> str:
    """Converts and writes; returns a one-paragraph summary of what was mapped."""
    check_config(config, source)
    out = pathlib.Path(out)
    if out.exists() and not (overwrite and (out / checkpointing.CONFIG_FILENAME).is_file()):
        raise UserError(f"{out} already exists; choose another --out" + (
            "" if not overwrite else " (--overwrite only replaces a converted workdir)") + ".")
    writable.check_folder(out.parent, "the folder of --out")
    weights = load_taming_checkpoint(checkpoint, VQGAN(**config.model), prefix=prefix)
    with writable.staged_folder(out) as staging:
        checkpointing.write_params_checkpoint(staging, STEP, {GEN_PARAMS: weights.vqgan_params},
                                              config)
        tokenizer = load_tokenizer(staging)  # read back as stage 2 will read it
    return (f"converted {checkpoint} ({source}) -> {out}: {_summary(weights.vqgan_params)}; "
            f"{tokenizer.num_embeddings} codes, frames {tuple(tokenizer.frame_shape)} -> "
            f"{tokenizer.frame_tokens} tokens. Use it as --config.tokenizer.workdir={out}")


def main(argv: Sequence[str]) -> None:
    del argv
    for name in ("from", "checkpoint", "config", "out"):
        if FLAGS[name].value is None:
            raise UserError(f"--{name} is required; see --helpshort.")
    print(convert(FLAGS["from"].value, FLAGS.checkpoint, FLAGS.config, FLAGS.out,
                  prefix=FLAGS.prefix, overwrite=FLAGS.overwrite))


if __name__ == "__main__":
    define_flags()
    run_command(main)
