"""taming-transformers / TorchGANime VQModel checkpoints <-> our Flax params.

Our module paths mirror the PyTorch names, so conversion is a name and layout mapping:
    encoder.down.0.block.1.norm1.weight   -> params encoder/down_0/block_1/norm1/scale
    decoder.up.3.attn.0.q.weight (O,I,1,1) -> params decoder/up_3/attn_0/q/kernel (I,O)
    *.conv*.weight (O,I,kh,kw)             -> .../kernel (kh,kw,I,O)
    quantize.embedding.weight (N,D)        -> params quantize/embedding (N,D)
    loss.discriminator.main.3.running_mean -> batch_stats main_3/mean (BatchNorm)
Everything else in the checkpoint (LPIPS weights under loss.perceptual_loss, optimiser state,
hyper-parameters) is ignored. Converted arrays are float32 numpy; put them on devices (with
the shardings you want) yourself.
"""
import os
import re
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from ganime_jax.errors import UserError
from ganime_jax.models.discriminator import NLayerDiscriminator
from ganime_jax.models.vqgan import VQGAN

VQGAN_MODULES = ("encoder", "decoder", "quant_conv", "post_quant_conv", "quantize")
DISC_PREFIX = "loss.discriminator."
CODEBOOK_KEY = "quantize.embedding.weight"
CODEBOOK_PATH = ("quantize", "embedding")
ATTENTION_PROJECTIONS = frozenset({"q", "k", "v", "proj_out"})  # 1x1 convs -> Dense
INDEXED_MODULES = ("down", "up", "block", "attn", "main")  # torch ModuleList / Sequential
BATCH_STATS = {"running_mean": "mean", "running_var": "var"}
IGNORED_LEAVES = frozenset({"num_batches_tracked"})
TORCH_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
_TORCH_INDEX = re.compile(r"\b(" + "|".join(INDEXED_MODULES) + r")\.(\d+)\b")
_FLAX_INDEX = re.compile(r"^(" + "|".join(INDEXED_MODULES) + r")_(\d+)$")

Path = tuple[str, ...]


class TamingWeights(NamedTuple):
    """Converted trees (nested dicts of numpy arrays); the discriminator parts are None when
    the checkpoint has none (or, for batch stats, no BatchNorm)."""
    vqgan_params: dict
    disc_params: dict | None
    disc_batch_stats: dict | None


def _flax_path(torch_module: str) -> Path:
    return tuple(_TORCH_INDEX.sub(r"\1_\2", torch_module).split("."))


def _torch_module(path: Path) -> str:
    parts = [part if i and path[i - 1] == "mid" else _FLAX_INDEX.sub(r"\1.\2", part)
             for i, part in enumerate(path)]
    return ".".join(parts)


def _torch_key(collection: str, path: Path, prefix: str) -> str:
    """The taming state-dict key of one of our (collection, path) leaves."""
    if path == CODEBOOK_PATH:
        return CODEBOOK_KEY
    leaf = path[-1]
    if collection == "batch_stats":
        torch_leaf = {flax: torch for torch, flax in BATCH_STATS.items()}[leaf]
    else:
        torch_leaf = "bias" if leaf == "bias" else "weight"
    return f"{prefix}{_torch_module(path[:-1])}.{torch_leaf}"


def _convert_leaf(key: str, leaf: str, module: Path, value: np.ndarray) -> tuple[str, str,
                                                                                   np.ndarray]:
    """-> (collection, flax leaf name, array) for one torch tensor."""
    if leaf in BATCH_STATS:
        return "batch_stats", BATCH_STATS[leaf], value
    if leaf == "bias":
        return "params", "bias", value
    if leaf != "weight":
        raise UserError(f"checkpoint entry {key!r} is not a layer this converter knows "
                        "(ActNorm or a time embedding?): only taming's VQModel with BatchNorm "
                        "discriminator is supported")
    if value.ndim == 1:
        return "params", "scale", value
    if value.ndim == 4 and module[-1] in ATTENTION_PROJECTIONS:
        return "params", "kernel", value[:, :, 0, 0].T
    if value.ndim == 4:
        return "params", "kernel", value.transpose(2, 3, 1, 0)
    if value.ndim == 2:
        return "params", "kernel", value.T
    raise UserError(f"checkpoint entry {key!r} has an unexpected shape {value.shape}")


def _split(state_dict: Mapping[str, Any], prefix: str) -> tuple[dict, dict]:
    vqgan, disc = {}, {}
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            continue
        key = key[len(prefix):]
        if key.startswith(DISC_PREFIX):
            disc[key[len(DISC_PREFIX):]] = (prefix + key, value)
        elif key.split(".")[0] in VQGAN_MODULES:
            vqgan[key] = (prefix + key, value)
    return vqgan, disc


def _convert_group(entries: dict) -> tuple[dict[str, dict], dict[tuple[str, Path], str]]:
    """-> ({collection: flat {path: array}}, {(collection, path): original torch key})."""
    trees: dict[str, dict] = {}
    sources: dict[tuple[str, Path], str] = {}
    for name, (key, value) in entries.items():
        module, _, leaf = name.rpartition(".")
        if leaf in IGNORED_LEAVES:
            continue
        value = np.asarray(value, dtype=np.float32)
        if name == CODEBOOK_KEY:
            collection, path = "params", CODEBOOK_PATH
        else:
            module_path = _flax_path(module)
            collection, flax_leaf, value = _convert_leaf(key, leaf, module_path, value)
            path = (*module_path, flax_leaf)
        trees.setdefault(collection, {})[path] = np.ascontiguousarray(value)
        sources[(collection, path)] = key
    return trees, sources


def _convert(state_dict: Mapping[str, Any], prefix: str) -> tuple[dict, dict, dict]:
    vqgan_entries, disc_entries = _split(state_dict, prefix)
    if not vqgan_entries:
        raise UserError(f"no VQ-GAN weights (keys starting with '{prefix}encoder.') in the "
                        "checkpoint: is it a taming/TorchGANime VQModel? set `prefix` if its "
                        "keys carry one (e.g. 'first_stage_model.')")
    vqgan, vqgan_sources = _convert_group(vqgan_entries)
    disc, disc_sources = _convert_group(disc_entries)
    return vqgan, disc, {"vqgan": vqgan_sources, "disc": disc_sources}


def convert_taming_state_dict(state_dict: Mapping[str, Any], prefix: str = "") -> TamingWeights:
    """Maps a taming/TorchGANime VQModel state dict (name -> array) to our Flax trees.

    Only keys starting with `prefix` are used (e.g. "first_stage_model." for a taming
    Net2NetTransformer checkpoint), with the prefix removed. No shape checks: see
    `load_taming_checkpoint`.
    """
    vqgan, disc, _ = _convert(state_dict, prefix)
    if "batch_stats" in vqgan:
        raise UserError("the checkpoint's VQ-GAN has BatchNorm statistics: not a taming VQModel")

    def nested(flat: dict | None) -> dict | None:
        return unflatten_dict(flat) if flat else None

    return TamingWeights(unflatten_dict(vqgan["params"]), nested(disc.get("params")),
                         nested(disc.get("batch_stats")))


def to_taming_state_dict(vqgan_params: Any, disc_params: Any = None,
                         disc_batch_stats: Any = None) -> dict[str, np.ndarray]:
    """The inverse mapping: our trees -> a taming-named state dict of float32 numpy arrays."""
    out: dict[str, np.ndarray] = {}

    def add(tree: Any, prefix: str, collection: str) -> None:
        for path, value in flatten_dict(jax.device_get(tree)).items():
            value = np.asarray(value, dtype=np.float32)
            if path[-1] == "kernel" and value.ndim == 2 and path[-2] in ATTENTION_PROJECTIONS:
                value = value.T[:, :, None, None]
            elif path[-1] == "kernel":
                value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
            out[_torch_key(collection, path, prefix)] = np.ascontiguousarray(value)

    add(vqgan_params, "", "params")
    if disc_params is not None:
        add(disc_params, DISC_PREFIX, "params")
    if disc_batch_stats is not None:
        add(disc_batch_stats, DISC_PREFIX, "batch_stats")
    return out


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """Tensors of a `.safetensors` file or a torch `.ckpt/.pt/.pth/.bin` (read with
    weights_only=True: no arbitrary code runs), as float32 numpy arrays. A Lightning
    checkpoint's "state_dict" entry is used when present."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint {path!r} does not exist: give the path of a .safetensors "
                        "or .ckpt/.pt file")
    import torch  # only this function needs it
    try:
        if path.endswith(".safetensors"):
            from safetensors import safe_open
            with safe_open(path, framework="pt") as f:
                tensors = {key: f.get_tensor(key) for key in f.keys()}
        elif path.endswith(TORCH_SUFFIXES):
            loaded = torch.load(path, map_location="cpu", weights_only=True)
            tensors = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else None
            if not isinstance(tensors, dict):
                raise UserError(f"{path!r} holds no state dict (a mapping of tensor names)")
        else:
            raise UserError(f"unknown checkpoint format {path!r}: use .safetensors or "
                            f"one of {', '.join(TORCH_SUFFIXES)}")
    except UserError:
        raise
    except Exception as error:  # torch/safetensors raise many types for unreadable files
        raise UserError(
            f"cannot read checkpoint {path!r} ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}). Torch files are read with "
            "weights_only=True; a Lightning checkpoint that pickles Python objects must first "
            "be re-saved as safetensors (safetensors.torch.save_file(ckpt['state_dict'], ...)) "
            "where you trust it") from error
    return {key: value.float().numpy() for key, value in tensors.items()
            if isinstance(value, torch.Tensor) and value.is_floating_point()}


def _abstract_variables(module: Any, factor: int, channels: int) -> dict:
    frames = jnp.zeros((1, factor, factor, channels), jnp.float32)
    return jax.eval_shape(module.init, jax.random.key(0), frames)


def _check_shapes(converted: dict, expected: dict, sources: dict, what: str,
                  key_prefix: str) -> None:
    """Missing, mismatching, then unexpected entries; each error names one key."""
    for collection in sorted(set(expected) | set(converted)):
        got = converted.get(collection, {})
        want = flatten_dict(expected.get(collection, {}))
        for path, spec in want.items():
            if path not in got:
                raise UserError(f"the checkpoint lacks {_torch_key(collection, path, key_prefix)!r}"
                                f", which the configured {what} needs: fix the model config "
                                "(channels, channel_multipliers, attention_resolutions, "
                                "resolution, lookup_dim, discriminator norm)")
            torch_key = sources[(collection, path)]
            if got[path].shape != spec.shape:
                raise UserError(f"checkpoint entry {torch_key!r} has shape "
                                f"{tuple(got[path].shape)} but the config expects "
                                f"{tuple(spec.shape)} (after layout conversion): fix the model "
                                "config to match the checkpoint")
        for path in got:
            if path not in want:
                raise UserError(f"checkpoint entry {sources[(collection, path)]!r} has no "
                                f"place in the configured {what} (check attention_resolutions,"
                                " resolution, num_res_blocks, discriminator norm)")


def load_taming_checkpoint(path: str, model: VQGAN,
                           discriminator: NLayerDiscriminator | None = None,
                           prefix: str = "") -> TamingWeights:
    """Reads, converts and shape-checks a checkpoint against `model` (and `discriminator`).

    Raises UserError naming the first missing, mismatching or unexpected key. Without
    `discriminator` the checkpoint's discriminator weights are ignored (returned as None).
    """
    vqgan, disc, sources = _convert(read_state_dict(path), prefix)
    _check_shapes(vqgan, _abstract_variables(model, model.downsampling_factor, model.in_channels),
                  sources["vqgan"], "VQ-GAN", prefix)
    if discriminator is None:
        return TamingWeights(unflatten_dict(vqgan["params"]), None, None)
    disc_factor = 2 ** (discriminator.num_layers + 2)
    _check_shapes(disc, _abstract_variables(discriminator, disc_factor, model.out_channels),
                  sources["disc"], "discriminator", prefix + DISC_PREFIX)
    stats = disc.get("batch_stats")
    return TamingWeights(unflatten_dict(vqgan["params"]), unflatten_dict(disc["params"]),
                         unflatten_dict(stats) if stats else None)
