"""GPT-2 decoder (pre-LN blocks, learned positions, tanh-GELU) in Flax linen.

Parameter names and layouts follow Hugging Face's GPT-2 so a pretrained checkpoint maps onto
them one to one (`ganime_jax.convert.hf_gpt2`); the attention projections are stored split by
head, (embed, 3, heads, head_dim) and (heads, head_dim, embed), so that heads can be sharded.
Every parameter carries logical axis names and activations are constrained to
("batch", "length", "embed"), so logical-axis rules (`config.mesh.axis_rules` of
configs/gpt_kny.py) turn a large preset into FSDP.
"""
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ganime_jax.errors import UserError

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# `jax.checkpoint_policies` members that are policies themselves (not policy factories).
REMAT_POLICIES = (
    "nothing_saveable",
    "everything_saveable",
    "dots_saveable",
    "checkpoint_dots",
    "dots_with_no_batch_dims_saveable",
    "checkpoint_dots_with_no_batch_dims",
)

ACTIVATION_AXES = ("batch", "length", "embed")

# A layer's attention given its q (B, T, H, D), k and v (B, T, H, D), the layer's slice of
# `past` and the `attend_inputs` shared by all layers -> (out (B, T, H, D), the layer's new
# state). A frame layout supplies one for block masks and frame caches; it must be a hashable
# (module-level) function, as it is a static module attribute.
AttendFn = Callable[[jax.Array, jax.Array, jax.Array, Any, Any], tuple[jax.Array, Any]]


@jax.tree_util.register_pytree_node_class
class LayerStates(tuple):
    """One `attend` state per layer, each in buffers of its own: a `past_kv` that the unrolled
    layers read without slicing. XLA:CPU copies a layer's slice of a stacked state before each
    dot that reads it; in the raster sampling loop those copies of the whole key/value cache
    took 70 % of the time (README, "Raster sampling")."""

    def tree_flatten(self) -> tuple[tuple[Any, ...], None]:
        return tuple(self), None

    @classmethod
    def tree_unflatten(cls, _: None, children: Any) -> "LayerStates":
        return cls(children)

_PRESETS = {
    "gpt2": dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12),
    "gpt2-medium": dict(vocab_size=50257, n_positions=1024, n_embd=1024, n_layer=24, n_head=16),
    "gpt2-large": dict(vocab_size=50257, n_positions=1024, n_embd=1280, n_layer=36, n_head=20),
    "gpt2-xl": dict(vocab_size=50257, n_positions=1024, n_embd=1600, n_layer=48, n_head=25),
    "mini": dict(vocab_size=1024, n_positions=1024, n_embd=256, n_layer=4, n_head=8),
    "tiny": dict(vocab_size=128, n_positions=256, n_embd=64, n_layer=2, n_head=4),
}


def gpt_preset(name: str) -> dict[str, int]:
    """Size fields of a named preset (GPT-2 family, or `mini`/`tiny` for laptops and tests)."""
    if name not in _PRESETS:
        raise UserError(f"unknown GPT preset {name!r}; choose one of {sorted(_PRESETS)}.")
    return dict(_PRESETS[name])


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    """GPT-2 hyper-parameters (Hugging Face names) plus compute knobs.

    `dtype` is the compute dtype; parameters are stored in `param_dtype`. `remat` is False or
    "" (off), True (recompute everything) or a name from `REMAT_POLICIES` (a string-typed
    config field can therefore express every choice).
    """

    vocab_size: int
    n_positions: int
    n_embd: int
    n_layer: int
    n_head: int
    n_inner: int | None = None
    layer_norm_epsilon: float = 1e-5
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    resid_pdrop: float = 0.1
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: bool | str = False
    scan_layers: bool = False

    def __post_init__(self) -> None:
        for field in ("dtype", "param_dtype"):
            name = _dtype_name(getattr(self, field))
            if name not in DTYPES:
                raise UserError(f"GPT {field} {name!r} is not supported; use one of {list(DTYPES)}.")
            object.__setattr__(self, field, name)
        if self.n_embd % self.n_head:
            raise UserError(
                f"GPT n_embd {self.n_embd} is not divisible by n_head {self.n_head}; "
                "pick a head count that divides the width.")
        if isinstance(self.remat, str) and self.remat and self.remat not in REMAT_POLICIES:
            raise UserError(f"GPT remat policy {self.remat!r} is unknown; use one of {REMAT_POLICIES}.")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "GPT2Config":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise UserError(f"unknown GPT config keys {unknown}; valid keys are {sorted(names)}.")
        return cls(**values)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def mlp_dim(self) -> int:
        return self.n_inner or 4 * self.n_embd

    @property
    def compute_dtype(self) -> jnp.dtype:
        return DTYPES[self.dtype]

    @property
    def weight_dtype(self) -> jnp.dtype:
        return DTYPES[self.param_dtype]


def _dtype_name(dtype: Any) -> str:
    try:
        return jnp.dtype(dtype).name
    except TypeError:
        return str(dtype)


def _normal(std: float, names: tuple[str | None, ...]) -> Callable:
    return nn.with_logical_partitioning(nn.initializers.normal(std), names)


def embedding_init(cfg: GPT2Config) -> Callable:
    """Init of the (rows, n_embd) conditioning tables a frame layout adds to the trunk."""
    return _normal(cfg.initializer_range, (None, "embed"))


def _zeros(names: tuple[str | None, ...]) -> Callable:
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


def _layer_norm(cfg: GPT2Config, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=cfg.layer_norm_epsilon, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
        use_fast_variance=False,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
        bias_init=_zeros(("embed",)), name=name)


def _output_std(cfg: GPT2Config) -> float:
    """GPT-2 scales the init of projections that write into the residual stream."""
    return cfg.initializer_range / (2 * cfg.n_layer) ** 0.5


def causal_mask(q_len: int, kv_len: int) -> jax.Array:
    """(1, 1, q_len, kv_len) mask; the queries are the last `q_len` of the `kv_len` positions."""
    offset = kv_len - q_len
    allowed = jnp.arange(kv_len)[None, :] <= jnp.arange(q_len)[:, None] + offset
    return allowed[None, None]


def explicit_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array,
    dropout: Callable[[jax.Array], jax.Array] | None = None,
) -> jax.Array:
    """Softmax attention written out, for when attention weights need dropout.

    q: (B, T, H, D), k and v: (B, S, H, D), mask broadcastable to (B, H, T, S).
    """
    logits = jnp.einsum("bthd,bshd->bhts", q, k).astype(jnp.float32) / q.shape[-1] ** 0.5
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    if dropout is not None:
        weights = dropout(weights)
    return jnp.einsum("bhts,bshd->bthd", weights, v)


class Linear(nn.Module):
    """x @ kernel + bias, contracting the last `n_in` axes of x; the kernel is born in its
    final shape (flax's DenseGeneral initialises a flattened kernel, whose logical-axis
    constraint then fails under a mesh)."""

    config: GPT2Config
    features: tuple[int, ...]
    kernel_axes: tuple[str | None, ...]
    std: float
    n_in: int = 1
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        kernel = self.param("kernel", _normal(self.std, self.kernel_axes),
                            x.shape[x.ndim - self.n_in:] + self.features, cfg.weight_dtype)
        y = jnp.tensordot(x.astype(cfg.compute_dtype), kernel.astype(cfg.compute_dtype), self.n_in)
        if self.use_bias:
            bias = self.param("bias", _zeros(self.kernel_axes[self.n_in:]), self.features,
                              cfg.weight_dtype)
            y = y + bias.astype(cfg.compute_dtype)
        return y


class Attention(nn.Module):
    """Multi-head self-attention. Without `attend`, causal attention over an optional prefix
    (`past`: its keys and values) that returns this call's keys/values; with `attend`, that
    function computes the attention from q, k, v (see `AttendFn`)."""

    config: GPT2Config
    deterministic: bool
    attend: AttendFn | None = None

    @nn.compact
    def __call__(self, x: jax.Array, past: Any, attend_inputs: Any):
        cfg = self.config
        head_axes = ("batch", "length", "heads", "kv")
        qkv = Linear(cfg, (3, cfg.n_head, cfg.head_dim), ("embed", None, "heads", "kv"),
                     cfg.initializer_range, name="c_attn")(x)
        q, k, v = (nn.with_logical_constraint(qkv[:, :, i], head_axes) for i in range(3))
        if self.attend is not None:
            out, new_past = self.attend(q, k, v, past, attend_inputs)
        else:
            out, new_past = self._causal(q, k, v, past)
        out = nn.with_logical_constraint(out, head_axes)
        out = Linear(cfg, (cfg.n_embd,), ("heads", "kv", "embed"), _output_std(cfg), n_in=2,
                     name="c_proj")(out)
        out = nn.Dropout(cfg.resid_pdrop)(out, deterministic=self.deterministic)
        return out, new_past

    def _causal(self, q: jax.Array, k: jax.Array, v: jax.Array,
                past_kv: tuple[jax.Array, jax.Array] | None):
        cfg = self.config
        new_kv = (k, v)
        if past_kv is not None:
            k = jnp.concatenate([past_kv[0].astype(k.dtype), k], axis=1)
            v = jnp.concatenate([past_kv[1].astype(v.dtype), v], axis=1)
        mask = causal_mask(q.shape[1], k.shape[1])
        if not self.deterministic and cfg.attn_pdrop > 0:
            dropout = nn.Dropout(cfg.attn_pdrop, deterministic=False)
            out = explicit_attention(q, k, v, mask, dropout)
        elif past_kv is None:
            out = jax.nn.dot_product_attention(q, k, v, is_causal=True)
        else:
            out = jax.nn.dot_product_attention(q, k, v, mask=mask)
        return out, new_kv


class MLP(nn.Module):
    config: GPT2Config
    deterministic: bool

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        h = Linear(cfg, (cfg.mlp_dim,), ("embed", "mlp"), cfg.initializer_range, name="c_fc")(x)
        h = nn.with_logical_constraint(jax.nn.gelu(h, approximate=True), ("batch", "length", "mlp"))
        h = Linear(cfg, (cfg.n_embd,), ("mlp", "embed"), _output_std(cfg), name="c_proj")(h)
        return nn.Dropout(cfg.resid_pdrop)(h, deterministic=self.deterministic)


class Block(nn.Module):
    """Pre-LN transformer block; returns the new hidden states and the attention's state
    (this call's keys/values, or what `attend` returns)."""

    config: GPT2Config
    deterministic: bool
    attend: AttendFn | None = None

    @nn.compact
    def __call__(self, x: jax.Array, past: Any, attend_inputs: Any):
        cfg = self.config
        h, state = Attention(cfg, self.deterministic, self.attend, name="attn")(
            _layer_norm(cfg, "ln_1")(x), past, attend_inputs)
        x = nn.with_logical_constraint(x + h, ACTIVATION_AXES)
        h = MLP(cfg, self.deterministic, name="mlp")(_layer_norm(cfg, "ln_2")(x))
        return nn.with_logical_constraint(x + h, ACTIVATION_AXES), state


def _block_class(cfg: GPT2Config) -> type[nn.Module]:
    if not cfg.remat:
        return Block
    policy = getattr(jax.checkpoint_policies, cfg.remat) if isinstance(cfg.remat, str) else None
    return nn.remat(Block, policy=policy, prevent_cse=not cfg.scan_layers)


class GPT2LM(nn.Module):
    """GPT-2 language model: token ids (B, L) -> float32 logits (B, L, vocab).

    `extra_embeddings` (broadcastable to (B, L, n_embd)) are added to the token and position
    embeddings (GANime's conditioning). `past_kv` = (keys, values), each
    (n_layer, B, P, n_head, head_dim), holds a prefix computed earlier: the tokens then sit at
    positions P..P+L-1 and attend to the prefix. With `return_kv` the call also returns its own
    keys/values in that layout, e.g. to build such a prefix.

    A layout with its own attention pattern passes `attend` (an `AttendFn`), `attend_inputs`
    and `positions` ((L,) rows of the position table): `past_kv` is then whatever per-layer
    state `attend` reads, stacked on a leading layer axis or as `LayerStates`, and `return_kv`
    returns what it writes (stacked). `output_rows` selects the positions whose logits are
    computed (all by default): the vocabulary head is most of a small model's cost, and the
    gradient of logits sliced afterwards is a padded (B, L, vocab) array.
    """

    config: GPT2Config

    @nn.compact
    def __call__(
        self, tokens: jax.Array, extra_embeddings: jax.Array | None = None, *, train: bool = False,
        past_kv: Any = None, return_kv: bool = False, attend: AttendFn | None = None,
        attend_inputs: Any = None, positions: jax.Array | None = None,
        output_rows: slice = slice(None),
    ):
        cfg = self.config
        length = tokens.shape[1]
        if positions is None:
            if past_kv is None:
                offset = 0
            elif isinstance(past_kv, LayerStates):  # keys (B, P, H, D) per layer
                offset = past_kv[0][0].shape[1]
            else:  # keys (n_layer, B, P, H, D)
                offset = past_kv[0].shape[2]
            if offset + length > cfg.n_positions:
                raise UserError(
                    f"sequence of {offset + length} tokens exceeds the GPT's n_positions "
                    f"{cfg.n_positions}; raise n_positions or shorten the context.")
            positions = jnp.arange(offset, offset + length)
        wte = self.param("wte", _normal(cfg.initializer_range, ("vocab", "embed")),
                         (cfg.vocab_size, cfg.n_embd), cfg.weight_dtype)
        wpe = self.param("wpe", _normal(cfg.initializer_range, (None, "embed")),
                         (cfg.n_positions, cfg.n_embd), cfg.weight_dtype)
        x = jnp.take(wte, tokens, axis=0, mode="clip") + jnp.take(wpe, positions, axis=0)[None]
        if extra_embeddings is not None:
            x = x + extra_embeddings
        x = nn.Dropout(cfg.embd_pdrop)(x.astype(cfg.compute_dtype), deterministic=not train)
        x = nn.with_logical_constraint(x, ACTIVATION_AXES)

        block = _block_class(cfg)
        if cfg.scan_layers:
            if isinstance(past_kv, LayerStates):
                past_kv = jax.tree.map(lambda *layers: jnp.stack(layers), *past_kv)
            stack = nn.scan(
                block, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                in_axes=(0, nn.broadcast), length=cfg.n_layer,
                metadata_params={nn.PARTITION_NAME: "layers"})
            x, kv = stack(cfg, not train, attend, name="h")(x, past_kv, attend_inputs)
        else:
            states = []
            for i in range(cfg.n_layer):
                if past_kv is None:
                    layer_past = None
                elif isinstance(past_kv, LayerStates):
                    layer_past = past_kv[i]
                else:
                    layer_past = jax.tree.map(lambda a: a[i], past_kv)
                x, state = block(cfg, not train, attend, name=f"h_{i}")(x, layer_past,
                                                                        attend_inputs)
                states.append(state)
            kv = jax.tree.map(lambda *layers: jnp.stack(layers), *states)

        x = _layer_norm(cfg, "ln_f")(x[:, output_rows])
        if cfg.tie_word_embeddings:
            logits = jnp.einsum("bld,vd->blv", x, wte.astype(cfg.compute_dtype))
        else:
            logits = Linear(cfg, (cfg.vocab_size,), ("embed", "vocab"), cfg.initializer_range,
                            use_bias=False, name="lm_head")(x)
        logits = nn.with_logical_constraint(logits, ("batch", "length", "vocab"))
        logits = logits.astype(jnp.float32)
        return (logits, kv) if return_kv else logits
