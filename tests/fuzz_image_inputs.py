"""Hypothesis strategies for images as users pass them: encoded files (PNG, JPEG, WebP, GIF, BMP,
TIFF) with bytes flipped, cut short or spliced, header dimensions set huge (with the checksums
fixed, so the decoder believes them), decompression bombs; numpy arrays of every dtype, shape and
stride; PIL images of every mode; paths to nothing, to directories, to huge sparse files."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import strategies as st
from PIL import Image

SIDES = [0, 1, 2, 3, 7, 255, 256, 4096, 16383, 16384, 65535, 65536, 2**24, 2**31 - 1, 2**31, 2**32 - 1]
PIL_MODES = ["1", "L", "P", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "I", "F", "I;16", "I;16B",
             "LA", "La", "PA", "RGBa"]


class Seeds(dict):  # type: ignore[type-arg]
    """name -> bytes, with a short repr (hypothesis prints strategy arguments)."""

    def __repr__(self) -> str:
        return f"Seeds({len(self)} images)"


class Paths(list):  # type: ignore[type-arg]
    def __repr__(self) -> str:
        return f"Paths({len(self)})"


def seed_images() -> dict[str, bytes]:
    """Small valid files of each format the fuzzer mutates."""
    rng = np.random.default_rng(7)
    rgb = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8), "RGB")
    out: dict[str, bytes] = {}

    def save(name: str, im: Image.Image, fmt: str, **kw: Any) -> None:
        buf = io.BytesIO()
        im.save(buf, fmt, **kw)
        out[name] = buf.getvalue()

    save("png", rgb, "PNG")
    save("png-rgba", rgb.convert("RGBA"), "PNG")
    save("png-palette", rgb.convert("P"), "PNG", transparency=0)
    save("png-16bit", Image.fromarray(rng.integers(0, 65536, (16, 16), dtype=np.uint16)), "PNG")
    save("png-interlaced", rgb, "PNG", interlace=1)
    save("jpeg", rgb, "JPEG", quality=80)
    save("jpeg-progressive", rgb, "JPEG", progressive=True)
    save("jpeg-grey", rgb.convert("L"), "JPEG")
    save("jpeg-cmyk", rgb.convert("CMYK"), "JPEG")
    save("webp", rgb, "WEBP", quality=60)
    save("webp-lossless", rgb.convert("RGBA"), "WEBP", lossless=True)
    save("gif", rgb.convert("P"), "GIF")
    save("bmp", rgb, "BMP")
    save("tiff", rgb, "TIFF")
    save("tiff-deflate", rgb, "TIFF", compression="tiff_deflate")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: exercises exif_transpose
    save("jpeg-exif", rgb, "JPEG", exif=exif.tobytes())
    return Seeds(out)


def png_bomb(width: int, height: int, mode_byte: int = 2) -> bytes:
    """A PNG claiming width x height pixels whose data is a short zlib stream of zeros."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, mode_byte, 0, 0, 0)
    row = 1 + width * (3 if mode_byte == 2 else 1)
    raw = zlib.compress(b"\x00" * min(row * height, 1 << 22), 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def set_png_size(data: bytes, width: int, height: int) -> bytes:
    """The PNG with its IHDR dimensions replaced and the chunk's CRC recomputed."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return data
    body = struct.pack(">II", width, height) + data[24:29]
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + body) & 0xFFFFFFFF)
    return data[:16] + body + crc + data[33:]


def set_jpeg_size(data: bytes, width: int, height: int) -> bytes:
    """The JPEG with its SOF frame dimensions replaced (JPEG has no checksum)."""
    for marker in (b"\xff\xc0", b"\xff\xc2"):
        at = data.find(marker)
        if at >= 0:
            return data[:at + 5] + struct.pack(">HH", height & 0xFFFF, width & 0xFFFF) + data[at + 9:]
    return data


@st.composite
def encoded_image(draw: st.DrawFn, seeds: dict[str, bytes]) -> bytes:
    name = draw(st.sampled_from(sorted(seeds)))
    data = bytearray(seeds[name])
    how = draw(st.sampled_from(["flip", "flip", "truncate", "splice", "size", "size", "bomb", "none"]))
    if how == "flip":
        n = draw(st.integers(1, 8))
        for _ in range(n):
            # most decoders' state lives in the first bytes: bias the offsets there
            limit = draw(st.sampled_from([64, 512, len(data)]))
            at = draw(st.integers(0, min(limit, len(data)) - 1))
            data[at] = draw(st.integers(0, 255))
    elif how == "truncate":
        del data[draw(st.integers(0, len(data) - 1)):]
    elif how == "splice":
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.binary(min_size=1, max_size=64))
    elif how == "size":
        w, h = draw(st.sampled_from(SIDES)), draw(st.sampled_from(SIDES))
        data = bytearray(set_png_size(bytes(data), w, h) if name.startswith("png") else set_jpeg_size(bytes(data), w, h))
    elif how == "bomb":
        side = draw(st.sampled_from([2000, 7000, 9000, 20000, 65535, 2**31 - 1]))
        data = bytearray(png_bomb(side, draw(st.sampled_from([side, 1, 7000])), draw(st.sampled_from([0, 2]))))
    return bytes(data)


@st.composite
def array_image(draw: st.DrawFn) -> dict[str, Any]:
    """A recipe for build_array (views and huge virtual arrays do not survive a pickle)."""
    dtype = draw(st.sampled_from(["uint8", "uint8", "uint8", "int16", "float32", "float64", "bool", "uint16"]))
    ndim = draw(st.sampled_from([0, 1, 2, 3, 3, 3, 4]))
    dims = [draw(st.sampled_from([0, 1, 2, 3, 4, 5, 17, 40])) for _ in range(ndim)]
    how = draw(st.sampled_from(["plain", "plain", "transpose", "stride", "reverse", "broadcast", "readonly",
                                "memoryview"]))
    side = draw(st.sampled_from([64, 4096, 100000]))
    return {"recipe": "array", "dtype": dtype, "dims": dims, "how": how, "side": side}


def build_array(recipe: dict[str, Any]) -> Any:
    dtype, dims, how = np.dtype(recipe["dtype"]), list(recipe["dims"]), recipe["how"]
    ndim = len(dims)
    if how == "broadcast" and ndim == 3:
        # a huge virtual image that occupies a few bytes
        side = recipe["side"]
        return np.broadcast_to(np.zeros((1, 1, dims[2]), dtype=dtype), (side, side, dims[2]))
    array = np.random.default_rng(ndim).integers(0, 256, size=dims).astype(dtype)
    if how == "transpose" and ndim >= 2:
        array = array.swapaxes(0, 1)
    elif how == "stride" and ndim >= 2:
        array = np.repeat(np.repeat(array, 2, axis=0), 2, axis=1)[::2, ::-2]
    elif how == "reverse" and ndim >= 1:
        array = array[::-1]
    elif how == "readonly":
        array.setflags(write=False)
    elif how == "memoryview":
        return memoryview(np.ascontiguousarray(array))
    return array


@st.composite
def pil_image(draw: st.DrawFn) -> Image.Image:
    mode = draw(st.sampled_from(PIL_MODES))
    size = (draw(st.sampled_from([0, 1, 2, 9, 33])), draw(st.sampled_from([0, 1, 2, 9, 33])))
    try:
        im = Image.new(mode, size)
    except (ValueError, OSError):
        im = Image.new("RGB", size)
    if mode == "P" and draw(st.booleans()):
        im.info["transparency"] = draw(st.sampled_from([0, 255, 300, b"\x00\x01"]))
    return im


def path_cases(tmp: Path, seeds: dict[str, bytes]) -> list[Any]:
    """Paths a user might pass: missing, a directory, empty, a text file, a huge sparse file, a FIFO."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "empty.png").write_bytes(b"")
    (tmp / "readme.png").write_text("not an image\n" * 10)
    (tmp / "good.png").write_bytes(seeds["png"])
    with open(tmp / "sparse.png", "wb") as f:
        f.truncate(8 << 30)  # 8 GiB of nothing: must not be read into memory
    fifo = tmp / "fifo.png"
    if not fifo.exists():
        import os

        os.mkfifo(fifo)
    return Paths([str(tmp / "missing.png"), str(tmp), str(tmp / "empty.png"), str(tmp / "readme.png"),
            str(tmp / "good.png"), str(tmp / "sparse.png"), str(fifo), "/dev/null", "/proc/self/status",
            tmp / "good.png", b"", bytearray(seeds["jpeg"]), None, 3, 2.5, [1, 2, 3]])


def image_cases(seeds: dict[str, bytes], paths: list[Any]) -> st.SearchStrategy[dict[str, Any]]:
    image = st.one_of(encoded_image(seeds), encoded_image(seeds), encoded_image(seeds), array_image(), pil_image(),
                      st.sampled_from(paths), st.binary(max_size=256))
    max_pixels = st.one_of(st.none(), st.none(), st.sampled_from([1, 100, 1000, 40 * 48, 2**32]))
    return st.fixed_dictionaries({"kind": st.just("image"), "image": image, "max_pixels": max_pixels})
