"""Loading user images as model frames: any format Pillow reads, converted to 8-bit RGB."""
import os

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ganime_jax.data.clip_ops import resize_frames
from ganime_jax.errors import UserError

BACKGROUND = (255, 255, 255)  # transparent pixels are composited onto white
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def load_image(path: str | os.PathLike) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file (the first frame of an animated one).

    EXIF orientation is applied; transparency is composited onto white; greyscale, palette,
    CMYK and 16-bit images are converted.
    """
    if not os.path.isfile(path):
        raise UserError(f"cannot read image {path}: no such file.")
    try:
        with Image.open(path) as image:
            image.load()
            return _to_rgb(ImageOps.exif_transpose(image))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
        raise UserError(f"cannot read image {path}: {error}; give a PNG, JPEG, WebP, BMP or "
                        "similar image file.") from None


def _to_rgb(image: Image.Image) -> np.ndarray:
    if image.mode in _SIXTEEN_BIT_MODES:
        # Pillow's own conversion clips 16-bit values at 255 instead of scaling them.
        values = np.asarray(image, np.int64)
        image = Image.fromarray((np.clip(values, 0, 65535) >> 8).astype(np.uint8), "L")
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.asarray(image) * 255, 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, BACKGROUND + (255,))
        image = Image.alpha_composite(background, image)
    return np.asarray(image.convert("RGB"), np.uint8)


def load_frame_pair(first: str | os.PathLike, last: str | os.PathLike,
                    frame_shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The first and last frames as uint8 (H, W, 3) of the model's `frame_shape`.

    Both images must have the same size; when it differs from the model's they are
    centre-cropped to its aspect ratio and resized (as the training data was), with a notice.
    """
    first_image, last_image = load_image(first), load_image(last)
    if first_image.shape != last_image.shape:
        raise UserError(
            f"the first image {first} is {_size(first_image)} but the last image {last} is "
            f"{_size(last_image)} (width x height); give two frames of the same size.")
    height, width = frame_shape[:2]
    if first_image.shape[:2] == (height, width):
        return first_image, last_image
    print(f"note: resizing the {_size(first_image)} images to the model's frame size "
          f"{width}x{height} (centre crop to its aspect ratio, then resize).", flush=True)
    return resize_frames(first_image, height, width), resize_frames(last_image, height, width)


def _size(image: np.ndarray) -> str:
    return f"{image.shape[1]}x{image.shape[0]}"
