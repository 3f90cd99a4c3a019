"""The demo VQ-GAN for Moving MNIST: `vqgan_demo`'s network on 64x64 digit clips, for 2 CPU cores.

The embedded Moving MNIST (`configs/vqgan_moving_mnist.py`'s data: 10,000 training clips of two
bouncing digits, 20 frames each) is built on first use. The demo VQ-GAN's four narrow levels
(16/32/64/64 channels) turn a 64x64 frame into an 8x8 grid; attention sits at that grid. The
frames are white strokes on black, so 512 codes cover them (the anime demo needs 2048), and the
phases are shorter: L1 + codebook only to step 1,500, then LPIPS, and no discriminator: in the
4,000-step run with one from step 3,000 (README, "Moving MNIST demo pair") it changed neither
held-out PSNR (23.16 -> 23.22 dB) nor LPIPS (0.033), so the run stops at 3,000 steps. Dead codes
restart where the encoder outputs are quantised worst ("error"): with uniform restarts the
codebook collapsed early and the run ended at 20.06 dB / LPIPS 0.059, with "error" at 22.43 dB /
0.039 for the same CPU time (README, "Three tokenizer changes, measured").
"""
import ml_collections

from configs import vqgan_demo, vqgan_moving_mnist


def get_config() -> ml_collections.ConfigDict:
    config = vqgan_demo.get_config()
    mnist = vqgan_moving_mnist.get_config()
    config.data.dataset = mnist.data.dataset
    config.data.embedded = mnist.data.embedded
    config.data.height = config.data.embedded.get_ref("size")
    config.data.width = config.data.embedded.get_ref("size")
    # `resolution` follows the frame width (64): the 8x8 level is "resolution 8".
    # No tanh on the output: most pixels are exactly black (-1), and L1 keeps pushing them
    # there, so a tanh saturates and its gradient vanishes for the digits too (with it, a run
    # used one code at every logged step and its gradient norm fell from 3.3 to 0.002 by step
    # 250: black frames; without it, 30 codes in use at step 150 and a norm of 3.3).
    config.model.update(num_embeddings=512, attention_resolutions=(8,), output_tanh=False)
    config.loss.perceptual_start = 1_500
    config.train.update(num_steps=3_000)
    config.loss.disc_start = config.train.get_ref("num_steps")  # never reached: no discriminator
    config.codebook.restart_sampling = "error"
    return config
