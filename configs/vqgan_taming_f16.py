"""Stage 1 as taming-transformers builds its ImageNet f16 VQ-GAN (`imagenet_vqgan.yaml`).

For converting taming's own checkpoints (`python -m ganime_jax.convert --from=taming`):
channels 128 x (1, 1, 2, 2, 4), two res blocks per level, attention at 16 of a nominal
resolution 256, z 256, 1024 codes of 256, GroupNorm epsilon 1e-6, no tanh, taming's layers
(strided-conv down, nearest up, scaled attention). Its frames are downsampled 16x, so 64x128
frames become a 4x8 grid.
"""
import ml_collections

from configs import vqgan_kny


def get_config() -> ml_collections.ConfigDict:
    config = vqgan_kny.get_config()
    del config.model["resolution"]
    config.model.resolution = 256
    config.model.update(channels=128, channel_multipliers=(1, 1, 2, 2, 4), num_res_blocks=2,
                        attention_resolutions=(16,), z_channels=256, num_embeddings=1024,
                        embedding_dim=256, norm_eps=1e-6, output_tanh=False)
    return config
