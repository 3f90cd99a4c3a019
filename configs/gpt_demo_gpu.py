"""The demo GPT trained on one GPU, on the tokens of `vqgan_demo_gpu` (README, "Trained on a
GPU").

    python main.py --config=configs/gpt_demo_gpu.py        # -> workdirs/gpt_demo_gpu

`gpt_demo`'s network (128 wide, 4 layers, window of 3 frames per layer), so that it samples on
a laptop CPU, with what the Moving MNIST runs measured (`gpt_mnist_demo`): raster token order,
the relative position bias, lr 4e-3 and teacher forcing to the end; batches of 16 clips and as
many steps as fit a 10-minute device call.
"""
import ml_collections

from configs import gpt_demo

NUM_STEPS = 8_000


def get_config() -> ml_collections.ConfigDict:
    config = gpt_demo.get_config()
    config.tokenizer.workdir = "workdirs/vqgan_demo_gpu"
    config.model.relative_position_bias = True
    config.model.token_order = "raster"
    config.optimizer.update(lr=4e-3, init_lr=4e-4)
    config.train.update(batch_size=16, num_steps=NUM_STEPS, log_every=50,
                        checkpoint_every=NUM_STEPS // 5, sample_every=NUM_STEPS // 2)
    config.train.stop_ground_truth_after_step = config.train.get_ref("num_steps")
    config.eval.every = NUM_STEPS // 5
    config.sample.method = "top_k"
    return config
