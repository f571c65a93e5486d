"""Image decoding, validation, conversions and encoding (PIL <-> torch without numpy).

Everything that touches pixels outside the network lives here: limits and decompression-bomb guard,
EXIF orientation, mode conversions, resizing, output encoding, colour preservation and the soft
per-style region weights of multi-style transfer.
"""

from __future__ import annotations

import io
import math
import struct
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from model.imageio import pil_to_tensor, uint8_to_pil
from service.errors import ImageTooLarge, InvalidImage, InvalidParameter, UnsupportedMediaType

# MPO is how PIL names the multi-picture JPEGs many phone cameras write.
Image.init()  # register every plugin now: Image.open(formats=...) only consults registered ones
READ_FORMATS: tuple[str, ...] = tuple(
    f for f in ("PNG", "JPEG", "MPO", "WEBP", "BMP", "TIFF", "GIF") if f in Image.OPEN
)
OUTPUT_FORMATS: dict[str, str] = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
MIN_SIDE = 16  # the encoder downsamples by 16; smaller inputs carry no usable content
WHITE = (255, 255, 255)


@dataclass(frozen=True)
class ImageLimits:
    max_input_pixels: int


def _open(data: bytes, field: str, limits: ImageLimits) -> Image.Image:
    """Identify the format and check the header size before any pixel is decoded (bomb guard)."""
    if not data:
        raise InvalidImage(f"{field}: the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=READ_FORMATS)
    except UnidentifiedImageError:
        raise UnsupportedMediaType(
            f"{field}: not an image format this service reads; allowed: PNG, JPEG, WebP, BMP, TIFF, GIF"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLarge(f"{field}: image dimensions exceed the decompression-bomb limit") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidImage(f"{field}: corrupt image header ({exc})") from None
    width, height = img.size
    if width * height > limits.max_input_pixels:
        raise ImageTooLarge(
            f"{field}: {width}x{height} = {width * height} pixels exceeds the limit of "
            f"{limits.max_input_pixels} pixels"
        )
    if min(width, height) < MIN_SIDE:
        raise InvalidImage(
            f"{field}: {width}x{height} is too small; each side must be at least {MIN_SIDE} px"
        )
    return img


def _load(img: Image.Image, field: str) -> Image.Image:
    """Decode pixels of the first frame, then apply EXIF orientation."""
    try:
        img.seek(0)  # animated GIF / WebP / multi-page TIFF: the first frame
        img.load()
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error) as exc:
        raise InvalidImage(f"{field}: corrupt or truncated image data ({exc})") from None
    try:
        transposed = ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block must not lose an otherwise readable image
        transposed = None
    return transposed if transposed is not None else img


def _wide_gray_to_l(img: Image.Image) -> Image.Image:
    """16/32-bit integer or float grayscale to 8-bit, scaling rather than clipping."""
    if img.mode == "F":
        _, high = img.getextrema()
        scale = 255.0 if high <= 1.0 else 1.0  # float images are usually 0..1
        return img.point(lambda v: v * scale).convert("L")
    as_int = img.convert("I") if img.mode != "I" else img
    _, high = as_int.getextrema()
    if img.mode.startswith("I;16") or high > 255:
        as_int = as_int.point(lambda v: v / 257)
    return as_int.convert("L")


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB: alpha composited on white, wide grayscale scaled, CMYK converted."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        return _wide_gray_to_l(img).convert("RGB")
    if _has_alpha(img):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def to_gray(img: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit L (masks): transparent pixels count as black (not this region)."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        return _wide_gray_to_l(img)
    if _has_alpha(img):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("L")
    return img.convert("L")


def decode_image(data: bytes, field: str, limits: ImageLimits) -> Image.Image:
    """Bytes of any supported format to an upright 8-bit RGB image."""
    return to_rgb(_load(_open(data, field, limits), field))


def decode_mask(data: bytes, field: str, limits: ImageLimits) -> Image.Image:
    """Bytes to an upright 8-bit grayscale mask (white = inside the region)."""
    return to_gray(_load(_open(data, field, limits), field))


def decode_labels(data: bytes, field: str, limits: ImageLimits, num_labels: int) -> torch.Tensor:
    """A label map to an int64 tensor (H, W) of values in [0, num_labels).

    Palette images give their indices, grayscale their values; colour images must be gray (R = G = B).
    """
    img = _load(_open(data, field, limits), field)
    if img.mode == "P":
        labels_img = img
    elif img.mode in ("I", "F") or img.mode.startswith("I;16"):
        labels_img = img.convert("I")
    elif img.mode in ("L", "1", "LA"):
        labels_img = img.convert("L")
    else:
        rgb = img.convert("RGB")
        red, green, blue = rgb.split()
        if red.tobytes() != green.tobytes() or red.tobytes() != blue.tobytes():
            raise InvalidParameter(
                field,
                "a colour label map is ambiguous; send a grayscale or palette image (pixel value = style)",
            )
        labels_img = red
    labels = pil_channel_to_long(labels_img)
    found = int(labels.max())
    if int(labels.min()) < 0 or found >= num_labels:
        raise InvalidParameter(
            field, f"pixel value {found} found but there are {num_labels} styles; allowed 0..{num_labels - 1}"
        )
    return labels


def pil_channel_to_long(img: Image.Image) -> torch.Tensor:
    """Single-channel PIL image (P, L or I) to int64 (H, W)."""
    width, height = img.size
    if img.mode == "I":
        flat = torch.frombuffer(bytearray(img.tobytes("raw", "I")), dtype=torch.int32)
    else:
        flat = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    return flat.view(height, width).long()


def fit_within(width: int, height: int, max_side: int) -> tuple[int, int]:
    """Output size: longest side at most ``max_side`` (never upscaled), aspect kept, sides >= MIN_SIDE."""
    scale = min(1.0, max_side / max(width, height))
    return max(MIN_SIDE, round(width * scale)), max(MIN_SIDE, round(height * scale))


def resize(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    if img.size == size:
        return img
    # reducing_gap: fast box pre-shrink for big downscales, then Lanczos; quality loss is invisible.
    return img.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def square_crop(img: Image.Image, side: int) -> Image.Image:
    """Short side to ``side`` then a centred square crop: styles keep their texture scale undistorted."""
    width, height = img.size
    scale = side / min(width, height)
    scaled = resize(img, (max(side, round(width * scale)), max(side, round(height * scale))))
    left = (scaled.width - side) // 2
    top = (scaled.height - side) // 2
    return scaled.crop((left, top, left + side, top + side))


def to_tensor(img: Image.Image) -> torch.Tensor:
    """8-bit RGB PIL image to float (3, H, W) in [0, 1]."""
    return pil_to_tensor(img if img.mode == "RGB" else to_rgb(img))


def gray_to_tensor(img: Image.Image) -> torch.Tensor:
    """8-bit L PIL image to float (H, W) in [0, 1]."""
    width, height = img.size
    pixels = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    return pixels.view(height, width).float().div_(255.0)


def from_uint8(image: torch.Tensor) -> Image.Image:
    """uint8 (3, H, W) tensor to a PIL RGB image."""
    if image.dtype != torch.uint8:
        raise TypeError(f"from_uint8 needs a uint8 tensor, got {image.dtype}")
    return uint8_to_pil(image)


def encode_image(img: Image.Image, fmt: str) -> bytes:
    """Encode to png | jpeg | webp with settings balanced for speed and quality."""
    buffer = io.BytesIO()
    if fmt == "png":
        img.save(buffer, format="PNG", compress_level=1)  # level 1: ~5x faster, ~20% larger
    elif fmt == "jpeg":
        img.save(buffer, format="JPEG", quality=92, subsampling=0)
    elif fmt == "webp":
        img.save(buffer, format="WEBP", quality=90, method=2)
    else:
        raise InvalidParameter("format", f"{fmt!r} is not supported; allowed: {', '.join(OUTPUT_FORMATS)}")
    return buffer.getvalue()


# BT.601 full-range RGB <-> YCbCr (what JPEG uses); the chroma offset 0.5 is irrelevant here.
_RGB_TO_YCC = torch.tensor(
    [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]]
)  # (3, 3)


def preserve_color(stylized: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """Luminance transfer: the stylized image's luma with the content's chroma.

    stylized, content: (B, 3, H, W) in [0, 1] -> (B, 3, H, W) in [0, 1].
    """
    forward = _RGB_TO_YCC.to(stylized.device, torch.float32)
    inverse = torch.linalg.inv(forward)
    stylized_ycc = torch.einsum("ij,bjhw->bihw", forward, stylized.float())  # (B, 3, H, W)
    content_ycc = torch.einsum("ij,bjhw->bihw", forward, content.float())
    mixed = torch.cat([stylized_ycc[:, :1], content_ycc[:, 1:]], dim=1)  # (B, 3, H, W)
    return torch.einsum("ij,bjhw->bihw", inverse, mixed).clamp_(0.0, 1.0).to(stylized.dtype)


def pad_to(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pad (B, C, h, w) at the bottom/right to (B, C, height, width); reflect when possible."""
    _, _, h, w = image.shape
    pad_bottom, pad_right = height - h, width - w
    if pad_bottom == 0 and pad_right == 0:
        return image
    mode = "reflect" if pad_bottom < h and pad_right < w else "replicate"
    return F.pad(image, (0, pad_right, 0, pad_bottom), mode=mode)


def bucket_shape(height: int, width: int, step: int) -> tuple[int, int]:
    """Round a size up to the batching bucket (multiple of ``step``)."""
    return math.ceil(height / step) * step, math.ceil(width / step) * step


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(3.0 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return kernel / kernel.sum()  # (2r+1,)


def blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, H, W) maps with edge replication; sigma in pixels."""
    if sigma <= 0:
        return maps
    kernel = _gaussian_kernel(sigma)
    radius = kernel.numel() // 2
    x = maps.unsqueeze(1)  # (N, 1, H, W)
    # Replicate padding needs pad < size on some backends; clamp the radius per axis instead.
    x = F.pad(x, (radius, radius, 0, 0), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    x = F.pad(x, (0, 0, radius, radius), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    return x.squeeze(1)  # (N, H, W)


def soft_weights(regions: torch.Tensor, feather_px: float) -> torch.Tensor:
    """Per-style regions (N, H, W) in [0, 1] to soft weights summing to 1 at every pixel.

    ``feather_px`` is the width of the blend at region borders (2 sigma of the Gaussian). Pixels no
    region claims are shared equally.
    """
    count = regions.shape[0]
    soft = blur(regions.float(), feather_px / 2.0).clamp_(min=0.0)
    total = soft.sum(dim=0, keepdim=True)  # (1, H, W)
    uniform = torch.full_like(soft, 1.0 / count)
    return torch.where(total > 1e-6, soft / total.clamp(min=1e-6), uniform)


def masks_to_regions(masks: Sequence[Image.Image], size: tuple[int, int]) -> torch.Tensor:
    """Grayscale masks, resized to ``size`` (W, H), to (N, H, W) in [0, 1]."""
    resized = [m.resize(size, Image.Resampling.BILINEAR) if m.size != size else m for m in masks]
    return torch.stack([gray_to_tensor(m) for m in resized])


def labels_to_regions(labels: torch.Tensor, count: int, size: tuple[int, int]) -> torch.Tensor:
    """Label map (h, w) int64 to one-hot regions (N, H, W) at ``size`` (W, H), nearest neighbour."""
    width, height = size
    one_hot = F.one_hot(labels, count).permute(2, 0, 1).float()  # (N, h, w)
    if one_hot.shape[1:] != (height, width):
        one_hot = F.interpolate(one_hot.unsqueeze(0), size=(height, width), mode="nearest").squeeze(0)
    return one_hot
