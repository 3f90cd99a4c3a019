"""Stage 1 as TorchGANime (the PyTorch Lightning port of GANime) builds it: its `vqgan.yaml`.

For converting that port's checkpoints (`python -m ganime_jax.convert --from=torchganime`) and
reproducing its model exactly. It is taming-transformers' layout (strided-conv downsampling,
nearest upsampling, scaled attention) with these values of the port's own:
- GroupNorm epsilon 6.1e-5 (its `Normalize`; taming and GANime use 1e-6);
- `resolution: 256`: with 64x128 frames no level reaches resolution 16, so attention sits in
  the middle block only;
- no tanh after the decoder's last conv; 1024 codes.
"""
import ml_collections

from configs import vqgan_kny


def get_config() -> ml_collections.ConfigDict:
    config = vqgan_kny.get_config()
    # Unlinked from the frame width first: setting the shared reference would change
    # data.width too.
    del config.model["resolution"]
    config.model.resolution = 256
    config.model.norm_eps = 6.1e-5
    config.model.output_tanh = False
    config.model.num_embeddings = 1024
    return config
