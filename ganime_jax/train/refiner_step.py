"""Stage 3's train state and pure step: refine the frozen tokenizer's decode of in-betweens.

Each training clip gives one target: an in-between frame t drawn uniformly from 1..n-2 of its
n real frames. The target, the first and the last frame go through the frozen VQ-GAN (encode,
then decode) inside the step, so the refiner learns on what the tokenizer makes of true
frames; at generation time it refines what the GPT's tokens decode to. A refiner with
`candidate_statistics` learns instead on what a GPT drew (a "candidates" dataset,
`ganime_jax.candidate_dataset`): the decodes and statistics are read from the batch. Loss: L1,
the weighted LPIPS distance to the true frame and, optionally, the weighted negative PSNR.
"""
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from ganime_jax.data import pixels
from ganime_jax.losses.perceptual import lpips_distance
from ganime_jax.data.tfds_io import CANDIDATE_IMAGES
from ganime_jax.models.refiner import FrameRefiner, init_params
from ganime_jax.models.vqgan import VQGAN
from ganime_jax.tokenizer import decode_tokens, encode_frames

PSNR_EPS = 1e-10  # added to the mean squared error (on [0, 1]) before its logarithm


@flax.struct.dataclass
class RefinerState:
    step: jax.Array
    params: Any
    opt_state: Any


@flax.struct.dataclass
class StepFns:
    model: FrameRefiner = flax.struct.field(pytree_node=False)
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)
    tokenizer: VQGAN = flax.struct.field(pytree_node=False)
    grid_shape: tuple[int, int] = flax.struct.field(pytree_node=False)


def init_state(rng: jax.Array, fns: StepFns, frame_shape: tuple[int, int, int]) -> RefinerState:
    params = init_params(fns.model, rng, frame_shape[0], frame_shape[1])
    return RefinerState(step=jnp.zeros((), jnp.int32), params=params,
                        opt_state=fns.tx.init(params))


def through_tokenizer(fns: StepFns, tokenizer_params: Any, frames: jax.Array) -> jax.Array:
    """uint8 frames (B, H, W, 3) -> the frozen VQ-GAN's uint8 decode of their tokens."""
    tokens = encode_frames(fns.tokenizer, tokenizer_params, frames)
    return jax.lax.stop_gradient(decode_tokens(fns.tokenizer, tokenizer_params,
                                               fns.grid_shape, tokens))


def refiner_inputs(fns: StepFns, tokenizer_params: Any, frames: jax.Array, n_frames: jax.Array,
                   index: jax.Array) -> tuple[tuple[jax.Array, ...], jax.Array]:
    """(the refiner's inputs, the true frame in [-1, 1]) for in-between `index` (B,) of each
    clip `frames` (B, T, H, W, 3) uint8 with `n_frames` (B,) real frames; for a refiner with
    candidate statistics, of "candidates" frames (B, T, H, W, 15)."""
    if fns.model.candidate_statistics:
        return candidate_inputs(frames, n_frames, index)
    rows = jnp.arange(frames.shape[0])
    last_index = n_frames - 1
    target, first, last = (frames[rows, index], frames[:, 0], frames[rows, last_index])
    decoded = through_tokenizer(fns, tokenizer_params,
                                jnp.concatenate([target, first, last]))
    decoded, decoded_first, decoded_last = jnp.split(decoded, 3)
    fraction = index.astype(jnp.float32) / last_index.astype(jnp.float32)
    inputs = tuple(pixels.to_unit(x) for x in (decoded, first, last, decoded_first,
                                                 decoded_last)) + (fraction,)
    return inputs, pixels.to_unit(target)


def candidate_inputs(frames: jax.Array, n_frames: jax.Array, index: jax.Array
                     ) -> tuple[tuple[jax.Array, ...], jax.Array]:
    """`refiner_inputs` from "candidates" frames (`tfds_io.CANDIDATE_IMAGES` on the channel
    axis): the kept candidate's decode, the given frames and their decodes, the place, the
    candidates' statistics; and the true frame."""
    rows = jnp.arange(frames.shape[0])
    images = lambda x: jnp.split(pixels.to_unit(x), len(CANDIDATE_IMAGES), axis=-1)
    true, decoded, *statistics = images(frames[rows, index])
    first, decoded_first, *_ = images(frames[:, 0])
    last, decoded_last, *_ = images(frames[rows, n_frames - 1])
    fraction = index.astype(jnp.float32) / (n_frames - 1).astype(jnp.float32)
    return (decoded, first, last, decoded_first, decoded_last, fraction,
            jnp.concatenate(statistics, axis=-1)), true


def frame_psnr(images: jax.Array, target: jax.Array) -> jax.Array:
    """PSNR in dB (B,) of images in [-1, 1] (B, H, W, C) against the target, on the [0, 1]
    scale the eval uses (uncapped; `PSNR_EPS` keeps it finite for identical frames)."""
    mse = jnp.mean(jnp.square((images - target) / 2), axis=(1, 2, 3))
    return -10.0 * jnp.log10(mse + PSNR_EPS)


def losses(fns: StepFns, params: Any, inputs: tuple[jax.Array, ...], target: jax.Array,
           lpips_params: Any, loss_cfg: ml_collections.ConfigDict) -> dict[str, jax.Array]:
    refined = fns.model.apply({"params": params}, *inputs)
    result = {"l1": jnp.mean(jnp.abs(refined - target))}
    result["loss"] = loss_cfg.l1_weight * result["l1"]
    if loss_cfg.psnr_weight:
        # The eval averages PSNR over frames in dB, so a frame already close to its target
        # weighs more than under L1; the term is negative (higher PSNR, lower loss).
        result["psnr"] = jnp.mean(frame_psnr(refined, target))
        result["loss"] -= loss_cfg.psnr_weight * result["psnr"]
    if loss_cfg.perceptual_weight:
        result["lpips"] = jnp.mean(lpips_distance(lpips_params, refined, target,
                                                  dtype=jnp.dtype(loss_cfg.perceptual_dtype)))
        result["loss"] += loss_cfg.perceptual_weight * result["lpips"]
    return result


def make_train_step(fns: StepFns, loss_cfg: ml_collections.ConfigDict):
    def train_step(state: RefinerState, batch: dict, rng: jax.Array, tokenizer_params: Any,
                   lpips_params: Any) -> tuple[RefinerState, dict]:
        key = jax.random.fold_in(rng, state.step)
        n_frames = batch["n_frames"]
        index = jax.random.randint(key, n_frames.shape, 1, n_frames - 1)
        inputs, target = refiner_inputs(fns, tokenizer_params, batch["frames"], n_frames,
                                        index)

        def loss_fn(params):
            terms = losses(fns, params, inputs, target, lpips_params, loss_cfg)
            return terms["loss"], terms

        grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = fns.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics["grad_norm"] = optax.tree.norm(grads)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def eval_sums(params: Any, frames: jax.Array, n_frames: jax.Array, index: jax.Array,
              tokenizer_params: Any, lpips_params: Any, *, fns: StepFns) -> dict[str, jax.Array]:
    """Sums over the clips that have in-between `index` (B,) (index <= n_frames - 2): L1, LPIPS
    and PSNR of the refined decode and of the plain decode (what the refiner starts from), and
    how many clips counted."""
    valid = (index <= n_frames - 2).astype(jnp.float32)
    index = jnp.minimum(index, n_frames - 2)  # a clip without it reads a real frame, uncounted
    inputs, target = refiner_inputs(fns, tokenizer_params, frames, n_frames, index)
    refined = fns.model.apply({"params": params}, *inputs)
    decoded = inputs[0]
    l1 = lambda x: jnp.abs(x - target).mean((1, 2, 3))
    return {"l1": jnp.sum(valid * l1(refined)),
            "lpips": jnp.sum(valid * lpips_distance(lpips_params, refined, target)),
            "l1_decoded": jnp.sum(valid * l1(decoded)),
            "lpips_decoded": jnp.sum(valid * lpips_distance(lpips_params, decoded, target)),
            "psnr": jnp.sum(valid * frame_psnr(refined, target)),
            "psnr_decoded": jnp.sum(valid * frame_psnr(decoded, target)),
            "count": jnp.sum(valid)}
