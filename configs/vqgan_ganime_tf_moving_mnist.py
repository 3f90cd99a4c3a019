"""Stage 1 as GANime's TensorFlow code builds it for Moving MNIST (`moving_mnist_image.yaml`).

GANime's TF layers (configs/vqgan_ganime_tf.py) with that config's sizes: channels 128 x
(1, 1, 2, 2), one res block per level, z 128, 128 codes of 128, `resolution: 128` and
attention at 16 (so, as for kny, none inside the encoder's levels and two blocks in the
decoder's lowest level). 64x64 frames of the embedded Moving MNIST become 8x8 tokens.
"""
import ml_collections

from configs import vqgan_ganime_tf, vqgan_moving_mnist


def get_config() -> ml_collections.ConfigDict:
    config = vqgan_moving_mnist.get_config()
    layers = vqgan_ganime_tf.get_config().model
    del config.model["resolution"]
    config.model.resolution = layers.resolution
    for field in ("norm_eps", "output_tanh", "downsample", "upsample", "scaled_attention",
                  "attention_placement"):
        config.model[field] = layers[field]
    config.model.update(channels=128, channel_multipliers=(1, 1, 2, 2), num_res_blocks=1,
                        attention_resolutions=(16,), z_channels=128, num_embeddings=128,
                        embedding_dim=128)
    return config
