"""Decoding one image file into a uint8 RGB array, refusing what a decoder should not be asked to do.

Image headers can lie: a few hundred bytes can claim 100,000 × 100,000 pixels, a file can stop
half way, or hold many frames. Every such file ends in one `DataError` naming it, before any
large allocation (the size is checked from the header), never in a traceback.
"""

from __future__ import annotations

import io
import warnings
from collections import Counter

import numpy as np
from PIL import Image, UnidentifiedImageError

from tlpipe.util.errors import DataError, first_line

# Largest image accepted, in pixels (a 40-megapixel photo); larger headers are refused unread.
MAX_PIXELS = 40_000_000
# What the training sources read; predict also takes BMP, WebP and single-frame GIF/TIFF.
TRAINING_FORMATS = ("PNG", "JPEG")
PREDICT_FORMATS = ("PNG", "JPEG", "BMP", "WEBP", "GIF", "TIFF")


def decode_image(
    origin: str,
    data: bytes,
    *,
    color_mode: str = "convert",
    size: int | None = None,
    resize_mode: str = "center_crop",
    formats: tuple[str, ...] = TRAINING_FORMATS,
    converted: Counter | None = None,
) -> np.ndarray:
    """The image in `data` as uint8 H×W×3 RGB (size × size when `size` is given).

    `origin` names the file in errors; `converted` counts the non-RGB modes converted.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=list(formats))
            width, height = img.size
            if width * height > MAX_PIXELS or width <= 0 or height <= 0:
                raise DataError(
                    f"{origin}: image header claims {width}x{height} pixels; refusing more than "
                    f"{MAX_PIXELS:,} pixels (a corrupt or hostile file)"
                )
            frames = getattr(img, "n_frames", 1)
            if frames > 1:
                raise DataError(
                    f"{origin}: image has {frames} frames (animation or multi-page file); expected a single image"
                )
            if size is not None:
                # JPEG decoders can scale by 1/2..1/8 while decoding: far less work for large photos.
                img.draft("RGB", (size, size))
            img.load()
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        # Pillow's own limit can fire in Image.open, before the header's size is checked above.
        raise DataError(
            f"{origin}: image header claims more than {MAX_PIXELS:,} pixels ({first_line(err)}); refusing "
            "a corrupt or hostile file"
        ) from None
    except UnidentifiedImageError:
        raise DataError(f"{origin}: unreadable image (not a {'/'.join(formats)} file)") from None
    except (
        OSError,
        SyntaxError,
        ValueError,
        EOFError,
    ) as err:
        raise DataError(f"{origin}: unreadable image ({type(err).__name__}: {first_line(err)})") from None
    if img.mode != "RGB":
        if color_mode == "refuse":
            raise DataError(
                f"{origin}: image mode {img.mode} is not RGB and data.color_mode is 'refuse' "
                "(set it to 'convert' to convert grayscale/RGBA/palette images to RGB)"
            )
        if converted is not None:
            converted[img.mode] += 1
        # Palette images may carry transparency: go through RGBA so it is dropped, not garbled.
        img = (img.convert("RGBA") if img.mode == "P" else img).convert("RGB")
    if size is not None and img.size != (size, size):
        img = resize_square(img, size, resize_mode)
    return np.asarray(img, dtype=np.uint8)


def resize_square(img: Image.Image, size: int, mode: str) -> Image.Image:
    """A size×size image: the middle square after scaling the shorter side (center_crop), or both
    sides scaled (stretch). Antialiased (PIL's reducing filter), so downscaling does not alias."""
    if mode == "stretch":
        return img.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
    w, h = img.size
    side = min(w, h)
    box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
    return img.resize((size, size), Image.Resampling.BICUBIC, box=box, reducing_gap=3.0)
