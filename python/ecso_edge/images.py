"""Turns what users pass as an image (a path, bytes, a PIL image or an HxWx3 uint8 numpy array)
into packed RGB pixels for the core. Decoding happens here, with Pillow; the core never reads
files. Size limits are checked from the header, before any pixel is decoded."""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

ImageInput = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, "Image.Image", "np.ndarray[Any, Any]"]

__all__ = ["RgbPixels", "ImageInput", "load_rgb"]


@dataclass(frozen=True)
class RgbPixels:
    """Packed 8-bit RGB pixels, row-major, ``width * height * 3`` bytes."""

    width: int
    height: int
    data: bytes


def load_rgb(image: ImageInput, *, max_pixels: int) -> RgbPixels:
    """Decode ``image`` to RGB. Raises ``ImageError`` saying what is wrong with it."""
    if isinstance(image, np.ndarray):
        return _from_array(image, max_pixels)
    if isinstance(image, Image.Image):
        return _from_pil(image, "the PIL image", max_pixels)
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        if not data:
            raise ImageError("the image bytes are empty (0 bytes)")
        return _decode(io.BytesIO(data), "the image bytes", max_pixels)
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if not os.path.exists(path):
            raise ImageError(f"image file '{path}' not found")
        if os.path.isdir(path):
            raise ImageError(f"image path '{path}' is a directory, not an image file")
        if os.path.getsize(path) == 0:
            raise ImageError(f"image file '{path}' is empty (0 bytes)")
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ImageError(f"image file '{path}' cannot be read: {e.strerror}") from e
        return _decode(io.BytesIO(data), f"image file '{path}'", max_pixels)
    raise ImageError(
        f"unsupported image type {type(image).__name__}: pass a path, bytes, a PIL.Image or an HxWx3 uint8 array"
    )


def _decode(stream: io.BytesIO, what: str, max_pixels: int) -> RgbPixels:
    with warnings.catch_warnings():
        # Pillow's own bomb guard warns (or raises) by its global limit; ours is checked below.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(stream)
        except UnidentifiedImageError as e:
            raise ImageError(f"{what}: not an image format Pillow can read (PNG, JPEG, WebP, ...)") from e
        except Image.DecompressionBombError as e:
            raise ImageError(f"{what}: {e}") from e
        except OSError as e:
            raise ImageError(f"{what}: cannot be decoded ({e})") from e
        _check_size(im.size, what, max_pixels)
        try:
            im.load()
        except Image.DecompressionBombError as e:
            raise ImageError(f"{what}: {e}") from e
        except (OSError, SyntaxError, ValueError) as e:
            raise ImageError(f"{what}: the image data is truncated or corrupt ({e})") from e
        return _from_pil(im, what, max_pixels)


def _from_pil(im: Image.Image, what: str, max_pixels: int) -> RgbPixels:
    _check_size(im.size, what, max_pixels)
    try:
        im = ImageOps.exif_transpose(im)  # phone photos: honour the EXIF orientation
        if im.mode != "RGB":
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                # composite transparency onto white, as a viewer shows it
                rgba = im.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                im = Image.alpha_composite(background, rgba)
            im = im.convert("RGB")
        data = im.tobytes()
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{what}: the image data is truncated or corrupt ({e})") from e
    width, height = im.size
    return RgbPixels(width, height, data)


def _from_array(array: "np.ndarray[Any, Any]", max_pixels: int) -> RgbPixels:
    if array.dtype != np.uint8:
        raise ImageError(f"numpy image must have dtype uint8, got {array.dtype}")
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ImageError(f"numpy image must be HxWx3 (RGB) or HxWx4 (RGBA), got shape {array.shape}")
    if array.shape[2] == 4:
        array = array[:, :, :3]
    height, width = int(array.shape[0]), int(array.shape[1])
    _check_size((width, height), "the numpy image", max_pixels)
    return RgbPixels(width, height, np.ascontiguousarray(array).tobytes())


def _check_size(size: tuple[int, int], what: str, max_pixels: int) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageError(f"{what}: the image is empty ({width}x{height} pixels)")
    if width * height > max_pixels:
        raise ImageError(
            f"{what}: {width}x{height} pixels is over the limit of {max_pixels}; "
            "downscale it or raise EcsoConfig.max_image_pixels"
        )
