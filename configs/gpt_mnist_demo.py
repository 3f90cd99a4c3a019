"""The demo GPT for Moving MNIST: 20-frame digit clips tokenised by `vqgan_mnist_demo` (8x8 grid,
512 codes), sized for 2 CPU cores.

    python main.py --config=configs/vqgan_mnist_demo.py   # stage 1 -> workdirs/vqgan_mnist_demo
    python main.py --config=configs/gpt_mnist_demo.py     # stage 2 -> workdirs/gpt_mnist_demo

`gpt_demo`'s model (sequence layout, 128 wide, 4 layers, window of 3 frames per layer) on 64
tokens per frame: a bouncing digit's velocity needs two frames to read, and four layers reach 9
frames back. Measured on this dataset (README, "Moving MNIST demo pair"): teacher forcing to the
end (the model's own predictions as context taught it black frames: gpt_mnist6, gpt_mnist9),
the relative position bias (gpt_mnist10), lr 4e-3, the best of 1e-3 / 2e-3 / 4e-3 (one run
each: gpt_mnist10, 11, 14; held-out loss 1.038 / 0.994 / 0.961 and FVD 264 / 233 / 195 after
4,000 steps), and raster token order (gpt_mnist17: loss 0.903, FVD 144 against gpt_mnist14's
195; PSNR 12.26 against 12.67 dB).
"""
import ml_collections

from configs import gpt_demo


def get_config() -> ml_collections.ConfigDict:
    config = gpt_demo.get_config()
    config.tokenizer.workdir = "workdirs/vqgan_mnist_demo"
    config.data.dataset = "moving_mnist"
    config.data.min_frames = 20
    config.data.max_frames = 20
    config.model.frame_tokens = 64
    config.model.grid_width = 8
    config.model.gpt.update(vocab_size=512, n_positions=64)
    config.model.relative_position_bias = True
    config.model.token_order = "raster"
    config.optimizer.update(lr=4e-3, init_lr=4e-4)
    config.train.stop_ground_truth_after_step = config.train.get_ref("num_steps")
    config.sample.num_frames = 20
    # Greedy raster rollouts erase the digits within three frames (the black code is the
    # likeliest first patch of a digit); top-k draws them (README, gpt_mnist17).
    config.sample.method = "top_k"
    config.evaluate.num_frames = 20
    # Moving MNIST is mostly black: an all-black frame scores SSIM 0.71 there (issue 11).
    config.evaluate.methods = ("model", "reconstruction", "cross_fade", "hold", "black")
    return config
