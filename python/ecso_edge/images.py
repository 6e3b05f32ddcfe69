"""Turns what users pass as an image (a path, bytes, a PIL image or an HxWx3 uint8 numpy array)
into packed RGB pixels for the core. Decoding happens here, with Pillow; the core never reads
files. Size limits are checked from the header, before any pixel is decoded."""

from __future__ import annotations

import io
import os
import re
import warnings
from dataclasses import dataclass
from typing import Any, BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

ImageInput = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, "Image.Image", "np.ndarray[Any, Any]"]

__all__ = ["RgbPixels", "ImageInput", "load_rgb"]

# Pillow reads 16-bit PNG/TIFF as these modes; its own conversion to RGB clips at 255 (a
# 16-bit picture would come out almost white), so they are scaled to 8 bits here.
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
# Premultiplied-alpha modes, which Pillow cannot convert to RGB(A) directly.
_PREMULTIPLIED = {"La": "LA", "RGBa": "RGBA"}


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
            raise ImageError("the image bytes are empty (0 bytes); pass the encoded file's contents")
        return _decode(io.BytesIO(data), "the image bytes", max_pixels)
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if not os.path.exists(path):
            raise ImageError(f"image file '{path}' not found; check the path")
        if os.path.isdir(path):
            raise ImageError(f"image path '{path}' is a directory; pass the path of an image file")
        if os.path.getsize(path) == 0:
            raise ImageError(f"image file '{path}' is empty (0 bytes); the file was not written completely")
        try:
            f = open(path, "rb")
        except OSError as e:
            raise ImageError(f"image file '{path}' cannot be read: {e.strerror}") from e
        with f:
            # Pillow reads only what it decodes: a huge file that is no image costs nothing
            return _decode(f, f"image file '{path}'", max_pixels)
    raise ImageError(
        f"unsupported image type {type(image).__name__}: pass a path, bytes, a PIL.Image or an HxWx3 uint8 array"
    )


def _decode(stream: BinaryIO, what: str, max_pixels: int) -> RgbPixels:
    with warnings.catch_warnings():
        # Pillow's own bomb guard warns (or raises) by its global limit; ours is checked below.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(stream)
        except UnidentifiedImageError as e:
            raise ImageError(f"{what}: not an image format Pillow can read (PNG, JPEG, WebP, ...)") from e
        except Image.DecompressionBombError as e:
            raise _bomb_error(e, what, max_pixels) from e
        except OSError as e:
            raise ImageError(f"{what}: cannot be decoded: the image data is truncated or corrupt ({e})") from e
        _check_size(im.size, what, max_pixels)
        try:
            im.load()
        except Image.DecompressionBombError as e:
            raise _bomb_error(e, what, max_pixels) from e
        except (OSError, SyntaxError, ValueError) as e:
            raise ImageError(f"{what}: the image data is truncated or corrupt ({e})") from e
        return _from_pil(im, what, max_pixels)


def _bomb_error(e: Exception, what: str, max_pixels: int) -> ImageError:
    # Pillow refuses images over 2 * Image.MAX_IMAGE_PIXELS while opening them, before our
    # own check can run; say what that means for the caller.
    m = re.search(r"\((\d+) pixels\)", str(e))
    n = int(m.group(1)) if m else None
    if n is not None and n > max_pixels:
        return ImageError(
            f"{what}: {n} pixels is over the limit of {max_pixels}; "
            "downscale it or raise EcsoConfig.max_image_pixels"
        )
    return ImageError(
        f"{what}: Pillow refuses to decode it ({e}); downscale it, or raise PIL.Image.MAX_IMAGE_PIXELS "
        "as well as EcsoConfig.max_image_pixels"
    )


def _from_pil(im: Image.Image, what: str, max_pixels: int) -> RgbPixels:
    _check_size(im.size, what, max_pixels)
    try:
        im.load()  # a lazily opened PIL image decodes here
        im = ImageOps.exif_transpose(im)  # phone photos: honour the EXIF orientation
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{what}: the image data is truncated or corrupt ({e})") from e
    try:
        im = _to_rgb(im)
    except ValueError as e:
        raise ImageError(f"{what}: PIL mode {im.mode!r} cannot be converted to RGB ({e}); convert it first") from e
    width, height = im.size
    return RgbPixels(width, height, im.tobytes())


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode in _PREMULTIPLIED:
        im = im.convert(_PREMULTIPLIED[im.mode])
    if im.mode in _SIXTEEN_BIT_MODES or (im.mode == "I" and int(np.asarray(im).max(initial=0)) > 255):
        # 16-bit grey (mode "I" holding values over 255 is taken as 16-bit too): keep the top 8 bits
        wide = np.clip(np.asarray(im).astype(np.int64), 0, 65535)
        im = Image.fromarray((wide >> 8).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        # composite transparency onto white, as a viewer shows it
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, rgba)
    return im.convert("RGB")


def _from_array(array: "np.ndarray[Any, Any]", max_pixels: int) -> RgbPixels:
    if array.dtype != np.uint8:
        raise ImageError(
            f"numpy image must have dtype uint8, got {array.dtype}; convert it to uint8 values 0-255 "
            "(for floats in [0, 1]: (x * 255).round().astype(np.uint8))"
        )
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageError(
            f"numpy image must be HxWx3 (RGB), HxWx4 (RGBA) or HxW (grey), got shape {array.shape}"
        )
    height, width = int(array.shape[0]), int(array.shape[1])
    # before any copy, so an oversized array is refused without allocating more
    _check_size((width, height), "the numpy image", max_pixels)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    elif array.shape[2] == 4:
        # the same compositing onto white as an RGBA PIL image or PNG gets
        return _from_pil(Image.fromarray(np.ascontiguousarray(array), "RGBA"), "the numpy image", max_pixels)
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
