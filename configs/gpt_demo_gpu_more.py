"""The demo GPT on five times the training episodes, trained on one GPU (README, "More training
episodes").

    python -m data_prep.embedded --dataset=synthetic_anime --name=synthetic_anime_more \
        --data_root=datasets --num_test_episodes=12 --num_validation_episodes=6 \
        --num_extra_train_episodes=240                      # about 70 s on 2 cores
    python main.py --config=configs/gpt_demo_gpu_more.py    # -> workdirs/gpt_demo_gpu_more

`gpt_demo_gpu` overfitted its 60 training episodes (held-out loss lowest at step 4,800 of
6,400). The 240 extra episodes are numbered after the held-out ones, so the test and validation
episodes are those of `vqgan_demo`'s dataset. The shipped demo VQ-GAN tokenises them (on first
use), so stage 2 trains without a stage-1 run. Batches of 32 clips in bfloat16 compute.
"""
import ml_collections

from configs import gpt_demo_gpu

NUM_STEPS = 10_000


def get_config() -> ml_collections.ConfigDict:
    config = gpt_demo_gpu.get_config()
    config.tokenizer.workdir = "ganime_jax/assets/demo/vqgan"
    config.data.dataset = "synthetic_anime_more"
    config.model.gpt.dtype = "bfloat16"
    config.train.update(batch_size=32, num_steps=NUM_STEPS, checkpoint_every=NUM_STEPS // 8,
                        sample_every=NUM_STEPS // 2)
    config.eval.every = NUM_STEPS // 8
    config.sample.update(method="top_k", top_k=50, direction="both")
    return config
