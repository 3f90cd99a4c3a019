"""Stage 1 as GANime's TensorFlow code builds it for Kimetsu no Yaiba (`kny_image*.yaml`).

The sizes are the reference's (configs/vqgan_kny.py: channels 32 x (2, 4, 8, 8), one res block
per level, z 512, codes of 128) with its 50257 codes (GPT-2's vocabulary). Its layers differ
from taming's (read from its `vqgan_clean/diffusion` modules):
- downsampling: 2x2 average pooling, then a 3x3 "same" conv;
- upsampling: bilinear x2 (Keras `UpSampling2D`), then a 3x3 "same" conv;
- attention: Keras `layers.Attention` defaults, which do not scale the scores by
  1/sqrt(channels);
- attention placement: its configs say `resolution: 128`, `attention_resolution: [16]`; the
  encoder halves its counter only after adding an attention block, so it adds none inside
  its levels, while the decoder (counter from 128 / 2^3 = 16) puts one after each of the two
  blocks of its lowest level. Both keep the middle block's attention;
- GroupNorm (32 groups) epsilon 1e-6, and a tanh after the decoder's last conv.
"""
import ml_collections

from configs import vqgan_kny


def get_config() -> ml_collections.ConfigDict:
    config = vqgan_kny.get_config()
    # Unlinked from the frame width: the TF configs say 128 whatever the frame size.
    del config.model["resolution"]
    config.model.resolution = 128
    config.model.num_embeddings = 50257
    config.model.norm_eps = 1e-6
    config.model.output_tanh = True
    config.model.downsample = "avgpool_conv"
    config.model.upsample = "bilinear_conv"
    config.model.scaled_attention = False
    config.model.attention_placement = "ganime_tf"
    return config
