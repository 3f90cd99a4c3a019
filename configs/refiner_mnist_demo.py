"""Stage 3 on Moving MNIST: a refiner that reads the shipped GPT's candidates.

    python -m data_prep.candidates --bundle=ganime_jax/assets/moving_mnist --data_root=datasets \
        --num_clips=train:1024 --num_clips=validation:64
    python main.py --config=configs/refiner_mnist_demo.py      # -> workdirs/refiner_mnist_demo

The Moving MNIST GPT draws sharp digits, often in the wrong place: a digit a few pixels off costs
PSNR twice, and no choice among its draws reaches the black frame's PSNR (README, "What no
choice among the draws can reach"). This refiner reads, beside the medoid of the bundle's 8
draws and the given frames, the 8 draws' per-pixel median, mean and spread, and learns on the
GPT's own draws of training clips (a "candidates" dataset) to keep what the draws agree on.
L1 alone taught a scratch probe to output black; LPIPS keeps the digits; the negative PSNR term
weighs frames the way the eval's mean PSNR does.

Exported with `--sample=refiner_draw_weight=0.32`, generation mixes 0.32 of the kept draw back
into each refined in-between (chosen on validation clips; README, "A refiner of the GPT's own
draws").
"""
import ml_collections

from configs import refiner_demo, vqgan_mnist_demo


def get_config() -> ml_collections.ConfigDict:
    config = refiner_demo.get_config()
    config.tokenizer.workdir = "ganime_jax/assets/moving_mnist/vqgan"
    config.data = vqgan_mnist_demo.get_config().data
    # Whole 20-frame clips, as the candidates were drawn (a crop would lose the given frames).
    config.data.max_frames = 20
    config.data.min_frames = 20
    # Blended: the kept draw, the first and last frame, the draws' median and mean.
    config.model.update(candidate_statistics=True, blend_init=(2.0, -2.0, -2.0, 0.0, -1.0))
    # LPIPS weight 1 (a scratch probe, 1,024 training clips, 2,000 steps of 8): validation
    # PSNR 14.09 dB (black frame 13.93) at FVD 237 (hold 188); more weight keeps more digits.
    # The PSNR term at 0.03: once mixed with the draw, validation FVD 187.0 at 13.972 dB against
    # 186.7 at 13.956 dB without it (256 clips).
    config.loss.update(perceptual_weight=1.5, psnr_weight=0.03)
    config.train.num_steps = 2_000
    # 4 batches of 16 validation clips, every in-between of each: 1,152 frames.
    config.eval.update(every=500, num_batches=4)
    return config
