"""Imports a local Hugging Face GPT-2 checkpoint (config.json + safetensors) as initialisation.

HF's GPT-2 uses Conv1D layers whose weights are already (in, out); we only split the fused
query/key/value projection and the attention output by head to match `GPT2LM`'s layout.
Nothing is unpickled: tensors are read with safetensors' numpy backend.
"""
import json
import pathlib
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from safetensors import safe_open

from ganime_jax.errors import UserError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
PREFIX = "transformer."
# "truncate": keep the first vocab_size rows of the token embedding (and untied head);
# "reinit": leave them out, so the caller's freshly initialised ones stay.
VOCAB_POLICIES = ("truncate", "reinit")
_TANH_GELU = ("gelu_new", "gelu_pytorch_tanh")


def load_hf_gpt2(
    directory: str | pathlib.Path, *, vocab_size: int | None = None, vocab_policy: str = "truncate",
    n_positions: int | None = None, scan_layers: bool = False,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Returns (GPT2LM params as float32 numpy arrays, GPT2Config fields).

    `vocab_size`/`n_positions` smaller than the checkpoint's keep its first rows; a different
    vocabulary with `vocab_policy="reinit"` returns no token embedding (nor untied head) at all:
    overlay the result on a fresh init with `overlay_params`. `scan_layers` stacks the blocks
    for a `GPT2Config(scan_layers=True)` model.
    """
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        raise UserError(f"GPT-2 checkpoint directory {directory} does not exist; give a local "
                        "Hugging Face model directory (config.json + model.safetensors).")
    if vocab_policy not in VOCAB_POLICIES:
        raise UserError(f"vocab_policy {vocab_policy!r} is unknown; use one of {VOCAB_POLICIES}.")
    hf = _read_config(directory)
    config = _config_fields(hf)
    tensors = _read_tensors(directory)
    get = _getter(tensors, config, directory)

    params: dict[str, Any] = {"wpe": get("wpe.weight", (config["n_positions"], config["n_embd"]))}
    if n_positions is not None:
        if n_positions > config["n_positions"]:
            raise UserError(f"n_positions {n_positions} exceeds the checkpoint's "
                            f"{config['n_positions']}; use at most that many positions.")
        params["wpe"] = params["wpe"][:n_positions]
        config["n_positions"] = n_positions

    vocab = (config["vocab_size"], config["n_embd"])
    wte = get("wte.weight", vocab)
    head = None if config["tie_word_embeddings"] else get("lm_head.weight", vocab, prefixed=False)
    new_vocab = config["vocab_size"] if vocab_size is None else vocab_size
    if new_vocab != config["vocab_size"] and vocab_policy == "truncate":
        if new_vocab > config["vocab_size"]:
            raise UserError(f"vocab_size {new_vocab} exceeds the checkpoint's "
                            f"{config['vocab_size']}; use vocab_policy='reinit'.")
        wte = wte[:new_vocab]
        head = None if head is None else head[:new_vocab]
    keep_vocab = new_vocab == config["vocab_size"] or vocab_policy == "truncate"
    if keep_vocab:
        params["wte"] = wte
    if keep_vocab and head is not None:
        params["lm_head"] = {"kernel": head.T}
    config["vocab_size"] = new_vocab

    blocks = [_block(get, config, i) for i in range(config["n_layer"])]
    if scan_layers:
        params["h"] = jax.tree.map(lambda *xs: np.stack(xs), *blocks)
    else:
        params.update({f"h_{i}": block for i, block in enumerate(blocks)})
    params["ln_f"] = _layer_norm(get, "ln_f", config["n_embd"])
    config["scan_layers"] = scan_layers
    return params, config


def overlay_params(target: Any, source: Mapping[str, Any], path: str = "") -> Any:
    """`target` with every leaf that `source` has replaced (same shape, target's dtype and sharding).

    `target` may hold `nn.Partitioned` boxes (from `init`) or plain arrays; leaves absent from
    `source` keep their value, keys in `source` that `target` lacks are an error.
    """
    if not isinstance(source, Mapping):
        return _replace_leaf(target, source, path)
    if not isinstance(target, Mapping):
        raise UserError(f"imported parameters have a subtree at {path or '/'} where the model "
                        "has a single array; the checkpoint does not match the model layout.")
    missing = sorted(set(source) - set(target))
    if missing:
        raise UserError(f"imported parameters {[f'{path}/{k}' for k in missing]} do not exist in "
                        "the model; check scan_layers and tie_word_embeddings.")
    return {k: overlay_params(v, source[k], f"{path}/{k}") if k in source else v
            for k, v in target.items()}


def _replace_leaf(target: Any, value: np.ndarray, path: str) -> Any:
    boxed = isinstance(target, nn.Partitioned)
    current = target.unbox(apply_constraint=False) if boxed else target
    if tuple(current.shape) != tuple(value.shape):
        raise UserError(f"imported parameter {path} has shape {tuple(value.shape)} but the model "
                        f"expects {tuple(current.shape)}; match the GPT sizes to the checkpoint.")
    value = np.asarray(value, dtype=current.dtype)
    if isinstance(current, jax.Array):
        value = jax.device_put(value, current.sharding)
    return target.replace_boxed(value) if boxed else value


def _read_config(directory: pathlib.Path) -> dict[str, Any]:
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise UserError(f"{path} is missing; a Hugging Face GPT-2 directory needs {CONFIG_FILE}.")
    try:
        hf = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e}); re-download the checkpoint.") from e
    if hf.get("model_type") != "gpt2":
        raise UserError(f"{path} describes model_type {hf.get('model_type')!r}, not 'gpt2'.")
    unsupported = {
        "activation_function": hf.get("activation_function", "gelu_new") not in _TANH_GELU,
        "scale_attn_weights": not hf.get("scale_attn_weights", True),
        "scale_attn_by_inverse_layer_idx": hf.get("scale_attn_by_inverse_layer_idx", False),
        "add_cross_attention": hf.get("add_cross_attention", False),
    }
    bad = sorted(k for k, v in unsupported.items() if v)
    if bad:
        raise UserError(f"{path} sets {bad} to values this GPT-2 does not implement; only the "
                        "standard GPT-2 architecture can be imported.")
    return hf


def _config_fields(hf: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "vocab_size": int(hf["vocab_size"]),
        "n_positions": int(hf["n_positions"]),
        "n_embd": int(hf["n_embd"]),
        "n_layer": int(hf["n_layer"]),
        "n_head": int(hf["n_head"]),
        "n_inner": hf.get("n_inner"),
        "layer_norm_epsilon": float(hf.get("layer_norm_epsilon", 1e-5)),
        "embd_pdrop": float(hf.get("embd_pdrop", 0.1)),
        "attn_pdrop": float(hf.get("attn_pdrop", 0.1)),
        "resid_pdrop": float(hf.get("resid_pdrop", 0.1)),
        "tie_word_embeddings": bool(hf.get("tie_word_embeddings", True)),
        "initializer_range": float(hf.get("initializer_range", 0.02)),
    }


def _read_tensors(directory: pathlib.Path) -> dict[str, np.ndarray]:
    index = directory / WEIGHTS_INDEX_FILE
    if (directory / WEIGHTS_FILE).is_file():
        files = [directory / WEIGHTS_FILE]
    elif index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise UserError(f"{index} is not a safetensors index with a weight_map ({e}).") from e
        files = sorted({directory / f for f in weight_map.values()})
    else:
        raise UserError(f"{directory} has neither {WEIGHTS_FILE} nor {WEIGHTS_INDEX_FILE}; save "
                        "the model with save_pretrained(safe_serialization=True).")
    tensors = {}
    for file in files:
        try:
            with safe_open(file, framework="numpy") as f:
                tensors.update({k: f.get_tensor(k) for k in f.keys()})
        except (OSError, ValueError, TypeError) as e:
            raise UserError(f"cannot read {file} as float safetensors ({e}).") from e
    return tensors


def _getter(tensors: Mapping[str, np.ndarray], config: Mapping[str, Any], directory: pathlib.Path):
    def get(name: str, shape: tuple[int, ...], prefixed: bool = True) -> np.ndarray:
        keys = (PREFIX + name, name) if prefixed else (name, PREFIX + name)
        key = next((k for k in keys if k in tensors), None)
        if key is None:
            raise UserError(f"{directory} lacks tensor {name!r}; is it a GPT-2 checkpoint "
                            f"matching its config (tie_word_embeddings={config['tie_word_embeddings']})?")
        value = tensors[key]
        if tuple(value.shape) != shape:
            raise UserError(f"tensor {key!r} in {directory} has shape {tuple(value.shape)} but "
                            f"config.json implies {shape}; the checkpoint is inconsistent.")
        return np.asarray(value, dtype=np.float32)
    return get


def _layer_norm(get, name: str, width: int) -> dict[str, np.ndarray]:
    return {"scale": get(f"{name}.weight", (width,)), "bias": get(f"{name}.bias", (width,))}


def _block(get, config: Mapping[str, Any], i: int) -> dict[str, Any]:
    d, h = config["n_embd"], config["n_head"]
    m = config["n_inner"] or 4 * d
    p = f"h.{i}."
    return {
        "ln_1": _layer_norm(get, p + "ln_1", d),
        "attn": {
            "c_attn": {
                "kernel": get(p + "attn.c_attn.weight", (d, 3 * d)).reshape(d, 3, h, d // h),
                "bias": get(p + "attn.c_attn.bias", (3 * d,)).reshape(3, h, d // h),
            },
            "c_proj": {
                "kernel": get(p + "attn.c_proj.weight", (d, d)).reshape(h, d // h, d),
                "bias": get(p + "attn.c_proj.bias", (d,)),
            },
        },
        "ln_2": _layer_norm(get, p + "ln_2", d),
        "mlp": {
            "c_fc": {"kernel": get(p + "mlp.c_fc.weight", (d, m)), "bias": get(p + "mlp.c_fc.bias", (m,))},
            "c_proj": {"kernel": get(p + "mlp.c_proj.weight", (m, d)),
                       "bias": get(p + "mlp.c_proj.bias", (d,))},
        },
    }
