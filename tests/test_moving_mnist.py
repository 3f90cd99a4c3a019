"""Moving MNIST: disjoint digit pools, digits that stay in the frame and bounce, determinism."""
import numpy as np
import pytest

from ganime_jax.data import moving_mnist as mm
from ganime_jax.errors import UserError


@pytest.fixture(scope="module")
def pools() -> dict[str, np.ndarray]:
    return {split: mm.load_mnist_digits(split) for split in mm.SPLITS}


def test_pools_are_disjoint_and_cover_the_file(pools):
    train, test = pools["train"], pools["test"]
    assert train.shape == (4000, 28, 28) and test.shape == (1000, 28, 28)
    assert train.dtype == np.uint8 and train.max() > 200
    train_images = {digit.tobytes() for digit in train}
    assert not any(digit.tobytes() in train_images for digit in test)
    assert len(train_images | {digit.tobytes() for digit in test}) == 5000


def test_unknown_split_raises_user_error():
    with pytest.raises(UserError, match="split"):
        mm.load_mnist_digits("validation")


def test_clip_shape_and_grey_rgb(pools):
    clip = mm.render_moving_mnist_clip(0, pools["train"])
    assert clip.shape == (20, 64, 64, 3) and clip.dtype == np.uint8
    np.testing.assert_array_equal(clip[..., 0], clip[..., 2])
    assert clip.max() > 200 and (clip == 0).mean() > 0.5


def test_single_digit_stays_whole_inside_the_frame(pools):
    """All the ink of the digit is in every frame: it is never clipped by the border."""
    digits = pools["test"]
    ink = {int(d.sum(dtype=np.int64)) for d in digits}
    for seed in range(10):
        clip = mm.render_moving_mnist_clip(seed, digits, num_frames=40, num_digits=1)
        sums = clip[..., 0].reshape(40, -1).sum(axis=1, dtype=np.int64)
        assert len(set(sums.tolist())) == 1 and int(sums[0]) in ink


def test_digits_bounce_off_the_walls():
    corners = mm.bouncing_positions(np.random.default_rng(0), 200, room=36, step_length=0.1)
    assert corners.min() >= 0 and corners.max() <= 36
    for axis in range(2):
        steps = np.diff(corners[:, axis])
        signs = np.sign(steps[steps != 0])
        assert (signs[1:] != signs[:-1]).any()  # the direction reverses at least once
    assert {0, 36} <= set(corners.ravel().tolist())  # and it happens at the walls


def test_determinism(pools):
    a = mm.render_moving_mnist_clip(7, pools["train"])
    np.testing.assert_array_equal(a, mm.render_moving_mnist_clip(7, pools["train"]))
    assert not np.array_equal(a, mm.render_moving_mnist_clip(8, pools["train"]))


def test_bad_arguments_raise_user_error(pools):
    with pytest.raises(UserError):
        mm.render_moving_mnist_clip(0, pools["train"], size=20)
    with pytest.raises(UserError):
        mm.render_moving_mnist_clip(0, np.zeros((3, 32, 32), np.uint8))
