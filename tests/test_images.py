"""Photos read as they were taken (tlpipe/data/images.py): EXIF orientation, every mode Pillow
opens as 8-bit RGB or one line, multi-frame files, HEIC. Real files written by Pillow and
pillow-heif in memory, decoded by the one function ingest and predict share."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageCms, TiffImagePlugin

from tlpipe.data.images import (
    BACKGROUND,
    IMAGE_FORMATS,
    IMAGE_SUFFIXES,
    decode_image,
    prepare_image,
    register_openers,
    to_rgb,
)
from tlpipe.util.errors import DataError


def upright_image() -> np.ndarray:
    """24 high × 40 wide, four flat quadrants of different colours: every turn and flip of it differs."""
    img = np.zeros((24, 40, 3), np.uint8)
    img[:8, :16] = (230, 20, 20)
    img[:8, 16:] = (20, 230, 20)
    img[8:, :16] = (20, 20, 230)
    img[8:, 16:] = (230, 230, 20)
    return img


def stored_as(upright: np.ndarray, orientation: int) -> np.ndarray:
    """The pixels a camera stores for `upright` with this EXIF Orientation, from the tag's
    definition (where the stored 0th row and 0th column lie in the upright image)."""
    u = upright
    stored = {
        1: u,
        2: u[:, ::-1],  # 0th row top, 0th column right
        3: u[::-1, ::-1],  # bottom, right
        4: u[::-1],  # bottom, left
        5: u.transpose(1, 0, 2),  # 0th row is the left side, 0th column the top
        6: np.rot90(u, 1),  # 0th row is the right side, 0th column the top
        7: u[::-1, ::-1].transpose(1, 0, 2),  # right side, bottom
        8: np.rot90(u, -1),  # left side, bottom
    }[orientation]
    return np.ascontiguousarray(stored)


def encode(img: Image.Image | np.ndarray, fmt: str, **kwargs) -> bytes:
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    if fmt == "HEIF":
        register_openers()
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


# HEVC lossless with RGB kept as RGB (no YCbCr matrix, no chroma subsampling): exact pixels back.
LOSSLESS_HEIF = {"quality": -1, "chroma": 444, "matrix_coefficients": 0}


def exif(orientation: int) -> bytes:
    tags = Image.Exif()
    tags[0x0112] = orientation
    return tags.tobytes()


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "TIFF"])
def test_every_exif_orientation_gives_the_upright_pixels(fmt: str, orientation: int) -> None:
    upright = upright_image()
    stored = stored_as(upright, orientation)
    assert orientation == 1 or stored.shape != upright.shape or not np.array_equal(stored, upright)
    if fmt == "TIFF":
        data = encode(stored, fmt, tiffinfo={274: orientation})  # TIFF's own Orientation tag
    elif fmt == "JPEG":
        data = encode(stored, fmt, exif=exif(orientation), quality=95, subsampling=0)
    else:
        data = encode(stored, fmt, exif=exif(orientation), **({"lossless": True} if fmt == "WEBP" else {}))
    got = decode_image("photo", data)
    assert got.shape == upright.shape
    if fmt == "JPEG":
        assert np.abs(got.astype(int) - upright).max() <= 12
    else:
        np.testing.assert_array_equal(got, upright)
    # Resized as it is read (JPEG's draft scaling first): still upright, the same as the upright file resized.
    big = np.kron(upright, np.ones((8, 8, 1), np.uint8))
    resized = decode_image("photo", encode(stored_as(big, orientation), "JPEG", exif=exif(orientation)), size=16)
    twin = decode_image("photo", encode(big, "JPEG"), size=16)
    assert np.abs(resized.astype(int) - twin).max() <= 12


@pytest.mark.parametrize("value", [0, 9, 65535])
def test_an_invalid_orientation_reads_the_pixels_as_stored(value: int) -> None:
    stored = stored_as(upright_image(), 6)
    np.testing.assert_array_equal(decode_image("x", encode(stored, "PNG", exif=exif(value))), stored)


def gray(values: list[int], dtype: str) -> np.ndarray:
    return np.array([values], dtype=dtype)


def rgb_of(values: list[int]) -> np.ndarray:
    return np.repeat(np.array([values], np.uint8)[..., None], 3, axis=2)


def palette_with_transparency(fmt: str) -> bytes:
    img = Image.new("P", (2, 1), 0)
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)  # index 0: red, made transparent; 1: blue
    img.putpixel((1, 0), 1)
    return encode(img, fmt, transparency=0)


def lab_tiff(rgb: tuple[int, int, int]) -> bytes:
    to_lab = ImageCms.buildTransform(ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB")
    return encode(ImageCms.applyTransform(Image.new("RGB", (2, 1), rgb), to_lab), "TIFF")


def alpha(mode: str, pixels: list[tuple[int, ...]]) -> bytes:
    img = Image.new(mode, (len(pixels), 1))
    img.putdata(pixels)
    return encode(img, "PNG")


WHITE = BACKGROUND
MODES = {
    # name: (file bytes, the mode Pillow opens it as, the RGB pixels expected, tolerance)
    "16-bit gray PNG": (
        encode(gray([0, 257, 32768, 65535], "uint16"), "PNG"),
        "I;16",
        rgb_of([0, 1, 128, 255]),
        0,
    ),
    "16-bit gray TIFF, little-endian": (
        encode(gray([0, 257, 32768, 65535], "<u2"), "TIFF"),
        "I;16",
        rgb_of([0, 1, 128, 255]),
        0,
    ),
    "16-bit gray TIFF, big-endian": (
        encode(gray([0, 257, 32768, 65535], ">u2"), "TIFF"),
        "I;16B",
        rgb_of([0, 1, 128, 255]),
        0,
    ),
    "CMYK JPEG (Adobe, inverted)": (
        encode(Image.new("CMYK", (16, 8), (0, 255, 255, 0)), "JPEG", quality=100),
        "CMYK",
        np.full((8, 16, 3), (255, 0, 0), np.uint8),
        3,
    ),
    "CMYK TIFF": (
        encode(Image.frombytes("CMYK", (3, 1), bytes([0, 0, 0, 0, 0, 0, 0, 255, 0, 255, 255, 0])), "TIFF"),
        "CMYK",
        np.array([[WHITE, (0, 0, 0), (255, 0, 0)]], np.uint8),
        0,
    ),
    "palette PNG with a transparent entry": (
        palette_with_transparency("PNG"),
        "P",
        np.array([[WHITE, (0, 0, 255)]], np.uint8),
        0,
    ),
    "GIF with a transparent colour": (
        palette_with_transparency("GIF"),
        "P",
        np.array([[WHITE, (0, 0, 255)]], np.uint8),
        0,
    ),
    "gray with alpha (LA)": (
        alpha("LA", [(100, 255), (100, 0), (100, 128)]),
        "LA",
        rgb_of([100, 255, 178]),  # half transparent over white: (100·128 + 255·127) / 255
        1,
    ),
    "RGBA": (
        alpha("RGBA", [(200, 10, 10, 255), (200, 10, 10, 0)]),
        "RGBA",
        np.array([[(200, 10, 10), WHITE]], np.uint8),
        0,
    ),
    "RGB PNG with a transparent colour (tRNS)": (
        encode(Image.new("RGB", (2, 1), (1, 2, 3)), "PNG", transparency=(1, 2, 3)),
        "RGB",
        np.array([[WHITE, WHITE]], np.uint8),
        0,
    ),
    "1-bit": (
        encode(Image.frombytes("1", (8, 1), bytes([0b10100000])), "PNG"),
        "1",
        rgb_of([255, 0, 255, 0, 0, 0, 0, 0]),
        0,
    ),
    "grayscale (L)": (encode(gray([0, 77, 255], "uint8"), "PNG"), "L", rgb_of([0, 77, 255]), 0),
    "YCbCr TIFF": (encode(Image.new("YCbCr", (2, 1), (100, 128, 128)), "TIFF"), "YCbCr", rgb_of([100, 100]), 0),
    "CIELab TIFF": (lab_tiff((200, 50, 30)), "LAB", np.array([[(200, 50, 30)] * 2], np.uint8), 3),
}


@pytest.mark.parametrize("name", MODES)
def test_every_mode_becomes_correct_8_bit_rgb(name: str) -> None:
    data, mode, expected, tolerance = MODES[name]
    register_openers()
    assert Image.open(io.BytesIO(data)).mode == mode  # the file really is of that mode
    got = decode_image("x", data)
    assert got.dtype == np.uint8 and got.shape == expected.shape
    assert np.abs(got.astype(int) - expected).max() <= tolerance, got


def test_cmyk_jpeg_is_stored_adobe_inverted() -> None:
    """Pillow writes CMYK JPEGs as Photoshop does (an Adobe marker, inverted samples): the kind
    that read as a negative when the inversion is missed; covered above as one of the modes."""
    img = Image.open(io.BytesIO(MODES["CMYK JPEG (Adobe, inverted)"][0]))
    assert "adobe" in img.info


def test_modes_without_a_file_of_their_own_convert_too() -> None:
    """HSV has no file format, and Pillow 13 opens 16-bit PNGs as I;16; older Pillows said I."""
    hsv = to_rgb("x", Image.new("HSV", (1, 1), (0, 255, 255)))
    assert hsv.getpixel((0, 0)) == (255, 0, 0)
    as_png = Image.fromarray(np.array([[0, 32768, 65535]], np.int32))
    as_png.format = "PNG"
    np.testing.assert_array_equal(np.asarray(to_rgb("x", as_png)), rgb_of([0, 128, 255]))


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.array([[0, 1 << 20]], np.int32), r"x: image mode I \(32-bit integer samples\) has no standard white level"),
        (np.array([[0.0, 0.5]], np.float32), r"x: image mode F \(32-bit floating-point samples\) has no standard"),
    ],
)
def test_32_bit_samples_are_refused_in_one_line(array: np.ndarray, message: str) -> None:
    with pytest.raises(DataError, match=message) as err:
        decode_image("x", encode(array, "TIFF"))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["16-bit gray PNG", "CMYK JPEG (Adobe, inverted)", "gray with alpha (LA)", "1-bit"])
def test_color_mode_refuse_refuses_every_non_rgb_mode(name: str) -> None:
    data, mode, _, _ = MODES[name]
    with pytest.raises(DataError, match=rf"^x: image mode {mode} is not RGB and data.color_mode is 'refuse'"):
        decode_image("x", data, color_mode="refuse")


def test_a_photo_with_companion_images_reads_as_the_photo_and_animations_are_refused() -> None:
    photo, other = Image.new("RGB", (16, 16), (200, 30, 30)), Image.new("RGB", (8, 8), (0, 0, 0))
    # A JPEG with a second image appended (MPO: a preview, a gain map): the first is the photo.
    mpo = encode(photo, "MPO", save_all=True, append_images=[other])
    assert Image.open(io.BytesIO(mpo)).format == "MPO"
    assert decode_image("x.jpg", mpo, size=8)[4, 4].tolist() == pytest.approx([200, 30, 30], abs=3)
    # A HEIC of two images whose primary is the second: the primary is the photo.
    heic = encode(other, "HEIF", save_all=True, append_images=[photo], primary_index=1, **LOSSLESS_HEIF)
    np.testing.assert_array_equal(decode_image("x.heic", heic), np.asarray(photo))
    # A TIFF whose second page is a reduced-resolution preview of the first; and one of two pages.
    for subfile_type, ok in ((1, True), (0, False)):
        buf = io.BytesIO()
        with TiffImagePlugin.AppendingTiffWriter(buf, new=True) as tiff:
            photo.save(tiff, "TIFF")
            tiff.newFrame()
            other.save(tiff, "TIFF", tiffinfo={254: subfile_type})
            tiff.newFrame()
        if ok:
            assert decode_image("x.tif", buf.getvalue()).shape == (16, 16, 3)
        else:
            with pytest.raises(DataError, match=r"^x.tif: image has 2 frames \(animation or multi-page file\)"):
                decode_image("x.tif", buf.getvalue())
    gif = encode(photo, "GIF", save_all=True, append_images=[other.resize((16, 16))])
    with pytest.raises(DataError, match=r"^x.gif: image has 2 frames"):
        decode_image("x.gif", gif)


def test_heic_is_read_upright() -> None:
    """pillow-heif can encode here (its wheel carries an HEVC encoder): an iPhone-like HEIC of a
    sideways-stored photo with Orientation 6 reads upright (libheif applies the turn)."""
    upright = upright_image()
    data = encode(stored_as(upright, 6), "HEIF", exif=exif(6), **LOSSLESS_HEIF)
    assert data[4:8] == b"ftyp" and data[8:11] in (b"hei", b"mif")  # an HEIF file: heic, heix, mif1
    np.testing.assert_array_equal(decode_image("x.heic", data), upright)
    lossy = decode_image("x.heic", encode(stored_as(upright, 6), "HEIF", exif=exif(6), quality=90))
    assert lossy.shape == upright.shape and np.abs(lossy.astype(int) - upright).mean() <= 4


def test_one_list_of_formats_and_suffixes() -> None:
    from tlpipe.data import folders, labelled
    from tlpipe.predict import inputs

    assert folders.IMAGE_SUFFIXES is labelled.IMAGE_SUFFIXES is inputs.IMAGE_SUFFIXES is IMAGE_SUFFIXES
    assert {".heic", ".heif", ".webp", ".tif", ".bmp", ".gif"} <= set(IMAGE_SUFFIXES)
    assert "HEIF" in IMAGE_FORMATS


def test_an_xmp_orientation_is_applied_when_the_exif_has_none() -> None:
    """Some editors write the orientation only in XMP (tiff:Orientation); viewers turn those too."""
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    xmp += b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>'
    upright = upright_image()
    data = encode(stored_as(upright, 6), "JPEG", xmp=xmp, quality=95, subsampling=0)
    assert "exif" not in Image.open(io.BytesIO(data)).info
    assert np.abs(decode_image("x", data).astype(int) - upright).max() <= 12


def test_a_truncated_heic_is_one_line_naming_the_file() -> None:
    rng = np.random.default_rng(0)
    heic = encode(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), "HEIF", quality=80)
    for cut in (len(heic) // 2, 40):
        with pytest.raises(DataError, match=r"^x.heic: unreadable image \(") as err:
            decode_image("x.heic", heic[:cut])
        assert "\n" not in str(err.value)


def test_prepare_image_says_whether_it_resized_even_when_jpeg_draft_did_it() -> None:
    """predict counts the images it had to resize: a 64 px JPEG that the decoder itself scaled to
    the model's 32 px was resized; a 32 px one was not; 'refuse' leaves other sizes as they are."""
    big, small = encode(np.kron(upright_image(), np.ones((4, 4, 1), np.uint8)), "JPEG"), encode(upright_image(), "JPEG")
    pixels, resized = prepare_image("x", big, shape=(48, 80))
    assert pixels.shape == (48, 80, 3) and resized
    square = encode(np.kron(upright_image()[:, :24], np.ones((4, 4, 1), np.uint8)), "JPEG")  # 96x96
    drafted = Image.open(io.BytesIO(square))
    drafted.draft("RGB", (48, 48))
    assert drafted.size == (48, 48)  # the decoder alone brings it to the target
    pixels, resized = prepare_image("x", square, shape=(48, 48))
    assert pixels.shape == (48, 48, 3) and resized
    assert prepare_image("x", small, shape=(24, 40))[1] is False
    pixels, resized = prepare_image("x", big, shape=(24, 40), resize_mode="refuse")
    assert pixels.shape == (96, 160, 3) and not resized
    turned = encode(stored_as(upright_image(), 6), "JPEG", exif=exif(6))  # stored 40x24, upright 24x40
    assert prepare_image("x", turned, shape=(24, 40))[1] is False
