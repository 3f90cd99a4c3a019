"""What a generated clip is compared with: clips made from the true clip without the transformer.

Every function takes uint8 clips (B, T, H, W, 3) and returns clips of the same shape whose
first and last frames are the given ones (as generation keeps them), so that all methods are
scored on the same in-between frames 1..T-2.
- `cross_fade`: a linear blend from the first to the last frame;
- `hold`: the first frame held, then the last (each in-between frame copies the nearer end);
- `black`: all-black in-between frames (on Moving MNIST, mostly black, a floor for SSIM);
- `vqgan_reconstruction`: the true in-between frames through the frozen VQ-GAN's encoder and
  decoder, the best a transformer predicting the true tokens could do.
"""
import numpy as np

from ganime_jax import generation
from ganime_jax.errors import UserError


def _check_clips(clips: np.ndarray) -> np.ndarray:
    clips = np.asarray(clips)
    if clips.dtype != np.uint8 or clips.ndim != 5 or clips.shape[-1] != 3 or clips.shape[1] < 3:
        raise UserError(f"baselines want uint8 clips (B, T >= 3, H, W, 3), got {clips.dtype} "
                        f"{clips.shape}")
    return clips


def _blend_weights(num_frames: int) -> np.ndarray:
    """Weight of the last frame at each position: 0 at the first frame, 1 at the last."""
    return np.arange(num_frames, dtype=np.float32) / (num_frames - 1)


def cross_fade(clips: np.ndarray) -> np.ndarray:
    """Frame t = round((1 - a) first + a last) with a = t / (T - 1)."""
    clips = _check_clips(clips)
    first, last = clips[:, :1].astype(np.float32), clips[:, -1:].astype(np.float32)
    alpha = _blend_weights(clips.shape[1])[None, :, None, None, None]
    return np.round((1.0 - alpha) * first + alpha * last).astype(np.uint8)


def hold(clips: np.ndarray) -> np.ndarray:
    """Frame t is the first frame while t / (T - 1) <= 1/2, the last frame after that."""
    clips = _check_clips(clips)
    use_last = _blend_weights(clips.shape[1]) > 0.5
    index = np.where(use_last, clips.shape[1] - 1, 0)
    return clips[:, index]


def black(clips: np.ndarray) -> np.ndarray:
    """Every in-between frame all zeros; the ends stay as given."""
    out = _check_clips(clips).copy()
    out[:, 1:-1] = 0
    return out


def vqgan_reconstruction(tokenizer: generation.FrameTokenizer, clips: np.ndarray,
                         decode_batch_size: int | None = None) -> np.ndarray:
    """The in-between frames replaced by decode(encode(frame)); the ends stay as given.

    All in-between frames of `clips` are encoded in one call (callers batch the clips) and
    decoded `decode_batch_size` at a time (see `generation.decode_in_batches`).
    """
    clips = _check_clips(clips)
    batch, num_frames = clips.shape[:2]
    middle = clips[:, 1:-1].reshape(-1, *clips.shape[2:])
    tokens = tokenizer.encode(middle)
    decoded = generation.decode_in_batches(tokenizer, tokens, decode_batch_size)
    out = clips.copy()
    out[:, 1:-1] = decoded.reshape(batch, num_frames - 2, *clips.shape[2:])
    return out
