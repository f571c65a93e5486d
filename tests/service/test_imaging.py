"""Unit tests of decoding, conversions, resizing and encoding."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
import torch
from PIL import Image
from service_helpers import image_bytes

from model.imageio import quantize
from service import imaging
from service.errors import ImageTooLarge, InvalidImage, InvalidParameter, UnsupportedMediaType

LIMITS = imaging.ImageLimits(max_input_pixels=1_000_000)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_rgb16(width: int, height: int, rgb16: tuple[int, int, int]) -> bytes:
    """A 48-bit (16 bits per channel) RGB PNG, written by hand: PIL cannot write one."""
    row = b"\x00" + struct.pack(">HHH", *rgb16) * width
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(row * height))
        + _chunk(b"IEND", b"")
    )


def decode(data: bytes) -> Image.Image:
    return imaging.decode_image(data, "content", LIMITS)


def test_alpha_is_composited_on_white() -> None:
    img = decode(image_bytes((20, 20), "PNG", mode="RGBA", color=(255, 0, 0, 0)))
    assert img.mode == "RGB" and img.getpixel((5, 5)) == (255, 255, 255)
    half = decode(image_bytes((20, 20), "PNG", mode="RGBA", color=(0, 0, 0, 128)))
    assert 120 <= half.getpixel((5, 5))[0] <= 135


def test_palette_with_transparency() -> None:
    img = Image.new("P", (20, 20), 1)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    buffer = io.BytesIO()
    img.save(buffer, "PNG", transparency=1)
    assert decode(buffer.getvalue()).getpixel((3, 3)) == (255, 255, 255)


def test_16_bit_grayscale_is_scaled_not_clipped() -> None:
    img = decode(image_bytes((20, 20), "PNG", mode="I;16", color=32768))
    assert img.getpixel((0, 0)) == (127, 127, 127) or img.getpixel((0, 0)) == (128, 128, 128)


def test_16_bit_rgb_png() -> None:
    img = decode(png_rgb16(20, 20, (65535, 32768, 0)))
    red, green, blue = img.getpixel((0, 0))
    assert red == 255 and 126 <= green <= 129 and blue == 0


def test_cmyk_jpeg() -> None:
    img = decode(image_bytes((20, 20), "JPEG", mode="CMYK", color=(0, 255, 255, 0)))  # pure red in CMYK
    red, green, blue = img.getpixel((10, 10))
    assert red > 200 and green < 60 and blue < 60


def test_animated_gif_uses_first_frame() -> None:
    frames = [Image.new("RGB", (20, 20), color) for color in ((255, 0, 0), (0, 255, 0))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    red, green, _ = decode(buffer.getvalue()).getpixel((5, 5))
    assert red > 200 and green < 50


def test_exif_orientation_is_applied() -> None:
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 20, 20))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", exif=exif, quality=95)
    upright = decode(buffer.getvalue())
    assert upright.size == (20, 40)
    assert upright.getpixel((10, 5))[0] > 200  # the red half is now on top


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", InvalidImage),
        (b"not an image at all", UnsupportedMediaType),
        (image_bytes((20, 20), "PNG")[:60], InvalidImage),
        (image_bytes((8, 30), "PNG"), InvalidImage),
        (image_bytes((1001, 1000), "PNG", pattern=False), ImageTooLarge),
    ],
    ids=["empty", "unknown", "truncated", "too-small", "too-many-pixels"],
)
def test_decode_errors(data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error) as info:
        decode(data)
    assert "content" in str(info.value)


def test_square_crop() -> None:
    img = Image.new("RGB", (200, 100))
    assert imaging.square_crop(img, 64).size == (64, 64)


def test_tensor_round_trip_is_exact() -> None:
    img = decode(image_bytes((33, 17), "PNG"))
    tensor = imaging.to_tensor(img)  # (3, H, W)
    assert tensor.shape == (3, 17, 33) and tensor.dtype == torch.float32
    back = imaging.from_uint8(quantize(tensor))
    assert back.tobytes() == img.tobytes()
    # views (crops of a batch) convert correctly too
    batch = quantize(tensor)[None].repeat(2, 1, 1, 1)
    assert imaging.from_uint8(batch[1, :, :5, :7]).tobytes() == img.crop((0, 0, 7, 5)).tobytes()


@pytest.mark.parametrize(("fmt", "pil_format"), [("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")])
def test_encode_formats(fmt: str, pil_format: str) -> None:
    img = decode(image_bytes((40, 30), "PNG"))
    data = imaging.encode_image(img, fmt)
    reopened = Image.open(io.BytesIO(data))
    assert reopened.format == pil_format and reopened.size == (40, 30)


def test_decode_labels_from_palette_and_range_check() -> None:
    palette = Image.new("P", (20, 20), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))  # 3 distinct colours
    palette.paste(2, (10, 0, 20, 20))
    buffer = io.BytesIO()
    palette.save(buffer, "PNG")
    labels = imaging.decode_labels(buffer.getvalue(), "labels", LIMITS, 3)
    assert labels.shape == (20, 20) and set(labels.unique().tolist()) == {0, 2}
    with pytest.raises(InvalidParameter, match="pixel value 2"):
        imaging.decode_labels(buffer.getvalue(), "labels", LIMITS, 2)
