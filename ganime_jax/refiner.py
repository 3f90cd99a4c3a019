"""The frozen stage-3 refiner: a trained `FrameRefiner` loaded from its workdir (or a bundle's
`refiner/` folder), applied to decoded in-betweens at generation time.

Only the parameters are read from the newest checkpoint; the config comes from the same
checkpoint. `refine` takes uint8 frames and gives uint8 frames.

A `draw_weight` w > 0 gives (1 - w) * refined + w * the kept draw. A refiner trained on pixel
losses moves towards the mean of what the true frame could be (high PSNR, blurred); the draw is
a sample (sharp, often misplaced). Mixing the two walks the distortion-perception trade-off
(Freirich, Michaeli & Meir, NeurIPS 2021: the estimators optimal along it interpolate between
the minimum-MSE estimate and one of perfect perceptual quality, which the draw stands in for),
so w is tuned on validation clips after training, not learned.
"""
import dataclasses
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ganime_jax import checkpointing
from ganime_jax.data import pixels
from ganime_jax.errors import UserError
from ganime_jax.models.refiner import FrameRefiner, init_params

PARAMS_FIELD = "params"  # field of the stage-3 train state holding the refiner parameters
TRAIN_HINT = ("train it first: python main.py --config=configs/refiner_demo.py --workdir={}, "
              "or set config.sample.refiner_workdir to \"\" to generate without one")


def _refine(model: FrameRefiner, params: Any, draw_weight: float, decoded: jax.Array,
            first: jax.Array, last: jax.Array, decoded_first: jax.Array,
            decoded_last: jax.Array, fraction: jax.Array,
            statistics: jax.Array | None) -> jax.Array:
    decoded = pixels.to_unit(decoded)
    refined = model.apply({"params": params}, decoded, *(pixels.to_unit(x) for x in (
        first, last, decoded_first, decoded_last)), fraction,
        None if statistics is None else pixels.to_unit(statistics))
    return pixels.to_uint8((1.0 - draw_weight) * refined + draw_weight * decoded)


@dataclasses.dataclass(frozen=True)
class Refiner:
    """A frozen `FrameRefiner` with a jit-compiled `refine`, on the first device."""

    config: ml_collections.ConfigDict
    model: FrameRefiner
    params: Any
    step: int
    workdir: pathlib.Path
    draw_weight: float = 0.0  # of the kept draw in the output (module docstring)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_refine", jax.jit(
            lambda p, *images: _refine(self.model, p, self.draw_weight, *images)))

    @property
    def uses_candidates(self) -> bool:
        """Whether it reads the statistics of K candidate clips (`generation.generate_frames`)."""
        return self.model.candidate_statistics

    def refine(self, clips: np.ndarray, first: np.ndarray, last: np.ndarray,
               decoded_first: np.ndarray, decoded_last: np.ndarray, num_frames: int,
               statistics: np.ndarray | None = None) -> np.ndarray:
        """uint8 in-betweens (B, M, H, W, 3), frames 1..M of clips of `num_frames` frames, with
        their uint8 given frames and those frames' decodes (B, H, W, 3) -> refined, same shape.
        `statistics`: the candidates' uint8 `generation.candidate_statistics` (B, M, H, W, 9),
        given exactly when `uses_candidates`.

        Each clip's in-betweens go through the network together (one call per clip)."""
        if self.uses_candidates != (statistics is not None):
            raise UserError("this refiner reads candidate statistics; generate with "
                            "selection='medoid' and candidates > 1" if self.uses_candidates else
                            "candidate statistics given to a refiner that does not read them")
        batch, middle = clips.shape[:2]
        fraction = jnp.arange(1, middle + 1, dtype=jnp.float32) / (num_frames - 1)
        out = np.empty_like(clips)
        for index in range(batch):
            repeat = lambda frame: np.broadcast_to(frame, (middle, *frame.shape))
            out[index] = np.asarray(self._refine(
                self.params, clips[index], repeat(first[index]), repeat(last[index]),
                repeat(decoded_first[index]), repeat(decoded_last[index]), fraction,
                None if statistics is None else statistics[index]))
        return out


def load_refiner(workdir: str | pathlib.Path, draw_weight: float = 0.0) -> Refiner:
    """The refiner of the newest checkpoint in a stage-3 workdir, frozen, mixing `draw_weight`
    of the kept draw into its output."""
    if not 0.0 <= draw_weight <= 1.0:
        raise UserError(f"config.sample.refiner_draw_weight must be in [0, 1] (the kept draw's "
                        f"share of each refined in-between), got {draw_weight}.")
    workdir = pathlib.Path(workdir)
    if not workdir.is_dir():
        raise UserError(f"refiner workdir {workdir} does not exist; " + TRAIN_HINT.format(workdir))
    with checkpointing.newest(workdir, "refiner", TRAIN_HINT.format(workdir)) as (manager, step):
        config = ml_collections.ConfigDict(checkpointing.saved_config(manager, step))
        if config.get("stage") != "refiner":
            raise UserError(f"the checkpoint in {workdir} is of stage {config.get('stage')!r}, "
                            "not a refiner; give the workdir of a stage-3 (refiner) run.")
        model = FrameRefiner(**config.model)
        abstract = jax.eval_shape(lambda: init_params(
            model, jax.random.key(0), config.data.height, config.data.width))
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        params = checkpointing.restore_params(manager, step, PARAMS_FIELD, abstract, device)
    return Refiner(config=config, model=model, params=params, step=step, workdir=workdir,
                   draw_weight=float(draw_weight))
