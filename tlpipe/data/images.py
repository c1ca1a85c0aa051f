"""Decoding one image file into a uint8 RGB array, the one way training and prediction both read
images: decoded, turned upright (EXIF orientation), converted to 8-bit RGB and resized here.

Image headers can lie: a few hundred bytes can claim 100,000 × 100,000 pixels, a file can stop
half way, or hold many frames. Every such file ends in one `DataError` naming it, before any
large allocation (the size is checked from the header), never in a traceback.

What is read as the photo (the same for ingest and predict):
- orientation: a camera stores the sensor's pixels and an EXIF Orientation tag (1-8) saying how
  to show them; the pixels are turned the way every viewer shows them. (HEIF files carry theirs
  as transforms, which libheif applies itself and pillow-heif then resets the tag to 1.)
- several frames: animations (GIF, APNG, WebP) and multi-page TIFFs are refused, but a file that
  holds one photo plus companions is read as that photo: a HEIC's primary image (bursts, edits,
  and depth or gain maps sit beside it), a JPEG's first image when the camera appended others
  (MPO/MPF: previews, gain maps, the second eye of a stereo pair; the first is the photo by the
  format's own rule), and a TIFF's first page when all others are reduced-resolution previews
  or transparency masks of it (NewSubfileType).
- colour: every mode Pillow opens becomes 8-bit RGB (see `to_rgb`), or is refused in one line.
"""

from __future__ import annotations

import io
import threading
import warnings
from collections import Counter

import numpy as np
from PIL import Image, UnidentifiedImageError

from tlpipe.util.errors import DataError, first_line

# Largest image accepted, in pixels (a 40-megapixel photo); larger headers are refused unread.
MAX_PIXELS = 40_000_000
# What every source reads, training (folder, labels file) and prediction alike: one list of
# Pillow formats and one of file suffixes. A JPEG with appended images opens as MPO (JPEG's own
# opener), HEIF through pillow-heif.
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "WEBP", "GIF", "TIFF", "HEIF")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".heic", ".heif")

# Transparent pixels are shown over white before the alpha is dropped. Dropping alpha alone
# would show whatever colour the file stores under fully transparent pixels (often black, often
# left-over garbage, differing from one editor to the next); a fixed background makes the image
# what a viewer shows. White, because images with transparency (logos, product cut-outs,
# icons, scans with cleared backgrounds) are made to be seen on white pages.
BACKGROUND = (255, 255, 255)

# EXIF Orientation → the transpose that shows the stored pixels upright (as PIL.ImageOps.exif_transpose).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_ORIENTATION_TAG = 0x0112
# Where Pillow's getexif() finds an orientation outside TIFF's own tags.
_ORIENTATION_SOURCES = ("exif", "xmp", "XML:com.adobe.xmp", "Raw profile type exif")
# TIFF NewSubfileType bits of pages that are not images of their own: a reduced-resolution
# version of another page (1), a transparency mask (4).
_COMPANION_PAGE = 1 | 4
_OPENERS = threading.Lock()
_heif_registered = False


def register_openers() -> None:
    """Pillow reads HEIC/HEIF through pillow-heif: registered once, on the first image decoded
    (importing it costs a moment, and most runs of the pipeline never need it)."""
    global _heif_registered
    if _heif_registered:
        return
    with _OPENERS:
        if not _heif_registered:
            from pillow_heif import register_heif_opener

            register_heif_opener()
            _heif_registered = True


def decode_image(
    origin: str,
    data: bytes,
    *,
    color_mode: str = "convert",
    size: int | None = None,
    resize_mode: str = "center_crop",
    formats: tuple[str, ...] = IMAGE_FORMATS,
    converted: Counter | None = None,
) -> np.ndarray:
    """The image in `data` as uint8 H×W×3 RGB, upright (size × size when `size` is given).

    `origin` names the file in errors; `converted` counts the non-RGB modes converted.
    """
    return prepare_image(
        origin,
        data,
        color_mode=color_mode,
        shape=None if size is None else (size, size),
        resize_mode=resize_mode,
        formats=formats,
        converted=converted,
    )[0]


def prepare_image(
    origin: str,
    data: bytes,
    *,
    color_mode: str = "convert",
    shape: tuple[int, int] | None = None,
    resize_mode: str = "center_crop",
    formats: tuple[str, ...] = IMAGE_FORMATS,
    converted: Counter | None = None,
) -> tuple[np.ndarray, bool]:
    """The image in `data` as uint8 H×W×3 RGB, upright, and whether it had to be resized.

    `shape` (height, width) resizes to it: `resize_mode` center_crop or stretch for a square
    target (`resize_square`), stretched for another; 'refuse' leaves another size as it is, for
    the caller to refuse in its own words.
    """
    register_openers()
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
            _check_frames(origin, img)
            if shape is not None and resize_mode != "refuse":
                # JPEG decoders can scale by 1/2..1/8 while decoding: far less work for large
                # photos. Asked for the longer side in both directions, so that it holds whichever
                # way the orientation turns the image (for a square target: the target itself).
                img.draft("RGB", (max(shape), max(shape)))
            img.load()
            turn = orientation(img)
            img = upright(img, turn)
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
        mode = img.mode
        img = to_rgb(origin, img)
        if converted is not None:
            converted[mode] += 1
    elif "transparency" in img.info:
        img = to_rgb(origin, img)  # an RGB PNG with a transparent colour (tRNS)
    if shape is None or resize_mode == "refuse":
        return np.asarray(img, dtype=np.uint8), False
    target_h, target_w = shape
    # Resized: the image as stored (before JPEG's draft scaling), turned upright, is not the target.
    resized = ((height, width) if turn in (5, 6, 7, 8) else (width, height)) != (target_w, target_h)
    if img.size != (target_w, target_h):
        if target_h == target_w:
            img = resize_square(img, target_h, resize_mode)
        else:
            img = img.resize((target_w, target_h), Image.Resampling.BICUBIC, reducing_gap=3.0)
    return np.asarray(img, dtype=np.uint8), resized


def _check_frames(origin: str, img: Image.Image) -> None:
    """Refuses animations and multi-page files; a photo with companions is read as the photo
    (see the module's docstring). Leaves `img` at the frame to read."""
    frames = getattr(img, "n_frames", 1)
    if frames <= 1 or img.format in ("HEIF", "MPO"):
        return  # HEIF opens at its primary image, MPO at its first
    if img.format == "TIFF":
        subfile_types = []
        for page in range(1, frames):
            img.seek(page)
            subfile_types.append(int(img.tag_v2.get(254, 0)))
        img.seek(0)
        if all(t & _COMPANION_PAGE for t in subfile_types):
            return
    raise DataError(f"{origin}: image has {frames} frames (animation or multi-page file); expected a single image")


def orientation(img: Image.Image) -> int:
    """The image's EXIF Orientation (1-8), 1 when it has none, an invalid one or a corrupt EXIF
    block (read as viewers read it: as stored). Pillow also reads an XMP tiff:Orientation when
    the EXIF has none."""
    if img.format != "TIFF" and not any(key in img.info for key in _ORIENTATION_SOURCES):
        return 1  # nothing to read it from: skips building an empty Exif for every image
    try:
        value = img.getexif().get(_ORIENTATION_TAG)
    except (OSError, SyntaxError, ValueError, EOFError, KeyError, TypeError):
        return 1
    return value if isinstance(value, int) and value in _UPRIGHT else 1


def upright(img: Image.Image, turn: int | None = None) -> Image.Image:
    """The image as a viewer shows it: turned by its EXIF Orientation (`turn`, read when None)."""
    method = _UPRIGHT.get(orientation(img) if turn is None else turn)
    return img.transpose(method) if method is not None else img


def to_rgb(origin: str, img: Image.Image) -> Image.Image:
    """Any mode Pillow opens as 8-bit RGB, or one line saying why not.

    16-bit samples (I;16*, and I from a PNG, which holds at most 16 bits) are scaled from
    0..65535 to 0..255, rounded; 32-bit integer (I) and floating-point (F) samples are refused:
    they have no standard white level (0..1, 0..4095, 0..2³²-1 and raw sensor counts all occur),
    and a guessed or per-image scale would make the same scene different pixels from file to
    file. Transparency (alpha channels, a palette's or a colour's tRNS) is composited over
    `BACKGROUND`. CMYK (JPEG's Adobe-inverted CMYK is un-inverted by the decoder), YCbCr, LAB,
    HSV, 1-bit, grayscale and palettes are converted by Pillow.
    """
    mode = img.mode
    if mode.startswith("I;16") or (mode == "I" and img.format == "PNG"):
        if mode.endswith("S"):
            raise DataError(f"{origin}: image mode {mode} (signed 16-bit samples) cannot be read as RGB")
        samples = np.asarray(img).astype(np.int64)
        if samples.size and (samples.min() < 0 or samples.max() > 65535):
            raise DataError(f"{origin}: image mode {mode} holds samples outside 0..65535")
        gray = ((samples * 255 + 32767) // 65535).astype(np.uint8)
        img = Image.fromarray(gray)
    elif mode in ("I", "F"):
        kind = "32-bit integer" if mode == "I" else "32-bit floating-point"
        raise DataError(
            f"{origin}: image mode {mode} ({kind} samples) has no standard white level to scale to "
            "8-bit RGB; convert it to an 8- or 16-bit image first"
        )
    if mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (*BACKGROUND, 255)), rgba).convert("RGB")
    try:
        return img.convert("RGB")
    except ValueError as err:
        raise DataError(f"{origin}: image mode {mode} cannot be converted to RGB ({first_line(err)})") from None


def resize_square(img: Image.Image, size: int, mode: str) -> Image.Image:
    """A size×size image: the middle square after scaling the shorter side (center_crop), or both
    sides scaled (stretch). Antialiased (PIL's reducing filter), so downscaling does not alias."""
    if mode == "stretch":
        return img.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
    w, h = img.size
    side = min(w, h)
    box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
    return img.resize((size, size), Image.Resampling.BICUBIC, box=box, reducing_gap=3.0)
