"""Image input: every accepted form (path, bytes-like, PIL image in any common mode, numpy)
gives the same pixels, and every bad input (missing, empty, not an image, truncated, too large,
wrong dtype or shape) raises ImageError saying what is wrong, before any model work.
"""

from __future__ import annotations

import io
import re
import resource
import struct
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from PIL import Image

import ecso_edge
from ecso_edge import EcsoConfig, ImageError
from ecso_edge.images import RgbPixels, load_rgb

from conftest import make_image

LIMIT = 50_000_000


def rgb_array(r: RgbPixels) -> np.ndarray:
    return np.frombuffer(r.data, np.uint8).reshape(r.height, r.width, 3)


def encode(im: Image.Image, fmt: str = "PNG", **options: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **options)
    return buf.getvalue()


def png_claiming_size(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height, with almost no pixel data behind it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def session(tiny_model: ecso_edge.Model) -> ecso_edge.Session:
    return ecso_edge.Session(tiny_model)


@pytest.fixture(scope="module")
def png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("images") / "image.png"
    path.write_bytes(encode(Image.fromarray(make_image())))
    return path


# --------------------------------------------------------------------------------------------
# Bad inputs, through Session.run (the loader runs before the model)


def test_missing_path(session: ecso_edge.Session, tmp_path: Path) -> None:
    missing = tmp_path / "nope.png"
    with pytest.raises(ImageError, match=re.escape(f"image file '{missing}' not found; check the path")):
        session.run(missing, "What is this?", max_tokens=2)


def test_directory_path(session: ecso_edge.Session, tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=re.escape(f"image path '{tmp_path}' is a directory; pass the path of an image")):
        session.run(str(tmp_path), "What is this?", max_tokens=2)


def test_empty_file(session: ecso_edge.Session, tmp_path: Path) -> None:
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match=re.escape(f"image file '{empty}' is empty (0 bytes)")):
        session.run(empty, "What is this?", max_tokens=2)


def test_empty_bytes(session: ecso_edge.Session) -> None:
    with pytest.raises(ImageError, match=re.escape("the image bytes are empty (0 bytes)")):
        session.run(b"", "What is this?", max_tokens=2)


def test_random_bytes(session: ecso_edge.Session) -> None:
    noise = np.random.default_rng(0).bytes(2048)
    with pytest.raises(ImageError, match=re.escape("the image bytes: not an image format Pillow can read (PNG, JPEG")):
        session.run(noise, "What is this?", max_tokens=2)


def test_file_of_random_bytes(session: ecso_edge.Session, tmp_path: Path) -> None:
    bad = tmp_path / "photo.jpg"
    bad.write_bytes(np.random.default_rng(1).bytes(2048))
    with pytest.raises(ImageError, match=re.escape(f"image file '{bad}': not an image format Pillow can read")):
        session.run(bad, "What is this?", max_tokens=2)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("keep", [0.5, 0.1])
def test_truncated_image_bytes(session: ecso_edge.Session, fmt: str, keep: float) -> None:
    data = encode(Image.fromarray(make_image(64, 64)), fmt)
    with pytest.raises(ImageError, match=r"^the image bytes: .*the image data is truncated or corrupt"):
        session.run(data[: int(len(data) * keep)], "What is this?", max_tokens=2)


def test_truncated_image_file(session: ecso_edge.Session, png: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.png"
    cut.write_bytes(png.read_bytes()[: png.stat().st_size // 2])
    with pytest.raises(ImageError, match=re.escape(f"image file '{cut}': the image data is truncated or corrupt")):
        session.run(cut, "What is this?", max_tokens=2)


def test_unsupported_type(session: ecso_edge.Session) -> None:
    with pytest.raises(ImageError, match="unsupported image type list: pass a path, bytes, a PIL.Image or an HxWx3"):
        session.run([[0, 0, 0]], "What is this?", max_tokens=2)  # type: ignore[arg-type]


def test_image_error_is_a_value_error(session: ecso_edge.Session) -> None:
    with pytest.raises(ValueError):
        session.run(b"not an image", "What is this?", max_tokens=2)


def test_session_works_after_image_error(session: ecso_edge.Session, image: np.ndarray) -> None:
    with pytest.raises(ImageError):
        session.answer(b"not an image", "What is this?", max_tokens=2)
    assert len(session.answer(image, "What is this?", max_tokens=2).steps[0].tokens) == 2


def test_stream_refuses_bad_image_up_front(session: ecso_edge.Session) -> None:
    with pytest.raises(ImageError, match="not an image format"):
        session.stream(b"not an image", "What is this?", max_tokens=2)


@pytest.mark.parametrize(
    "array, problem",
    [
        (np.zeros((40, 48, 3), np.float32), "must have dtype uint8, got float32; convert it to uint8"),
        (np.zeros((40, 48, 3), np.uint16), "must have dtype uint8, got uint16"),
        (np.zeros((40, 48, 3), np.int64), "must have dtype uint8, got int64"),
        (np.zeros((40, 48, 2), np.uint8), r"must be HxWx3 \(RGB\), HxWx4 \(RGBA\) or HxW \(grey\), got shape \(40, 48, 2\)"),
        (np.zeros((3, 40, 48), np.uint8), r"got shape \(3, 40, 48\)"),
        (np.zeros(40 * 48 * 3, np.uint8), r"got shape \(5760,\)"),
        (np.zeros((1, 40, 48, 3), np.uint8), r"got shape \(1, 40, 48, 3\)"),
        (np.zeros((0, 48, 3), np.uint8), r"the numpy image: the image is empty \(48x0 pixels\)"),
    ],
    ids=["float32", "uint16", "int64", "two-channels", "channels-first", "flat", "batched", "zero-height"],
)
def test_bad_numpy_array(session: ecso_edge.Session, array: np.ndarray, problem: str) -> None:
    with pytest.raises(ImageError, match=problem):
        session.run(array, "What is this?", max_tokens=2)


# --------------------------------------------------------------------------------------------
# Size limits


def _png_bytes(array: np.ndarray) -> bytes:
    return encode(Image.fromarray(array))


@pytest.mark.parametrize("form", [lambda a: a, _png_bytes, lambda a: Image.fromarray(a)], ids=["numpy", "png-bytes", "pil"])
def test_image_over_pixel_limit(tiny_model: ecso_edge.Model, form: Callable[[np.ndarray], Any]) -> None:
    session = ecso_edge.Session(tiny_model, EcsoConfig(max_image_pixels=1000))
    with pytest.raises(ImageError, match="48x40 pixels is over the limit of 1000; downscale it or raise "
                       "EcsoConfig.max_image_pixels"):
        session.run(form(make_image(48, 40)), "What is this?", max_tokens=2)


def test_image_at_pixel_limit_is_accepted(tiny_model: ecso_edge.Model) -> None:
    session = ecso_edge.Session(tiny_model, EcsoConfig(max_image_pixels=48 * 40))
    assert session.answer(make_image(48, 40), "What is this?", max_tokens=2).stats["image_encodes"] == 1


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every pixel decode Pillow starts (Image.load runs the decoder of a lazily opened file)."""
    from PIL import ImageFile

    seen: list[str] = []
    for cls in (Image.Image, ImageFile.ImageFile):
        original = cls.load

        def load(self: Any, _original: Any = original) -> Any:
            seen.append(f"{type(self).__name__} {self.size}")
            return _original(self)

        monkeypatch.setattr(cls, "load", load)
    return seen


def test_the_decode_recorder_sees_a_decode(decodes: list[str]) -> None:
    load_rgb(_png_bytes(make_image(48, 40)), max_pixels=LIMIT)
    assert "PngImageFile (48, 40)" in decodes


@pytest.mark.parametrize("width, height", [(100_000, 100_000), (10_000, 10_000)])
def test_header_claiming_huge_size_is_refused_without_decoding(width: int, height: int, decodes: list[str]) -> None:
    data = png_claiming_size(width, height)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with pytest.raises(ImageError, match=rf"the image bytes: ({width}x{height} pixels|{width * height} pixels) is "
                       r"over the limit of 50000000; downscale it"):
        load_rgb(data, max_pixels=LIMIT)
    assert decodes == []
    # decoding would need width * height * 3 bytes (30 GB / 300 MB): nothing near that was touched
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 50 * 1024


def test_huge_header_through_session_run(session: ecso_edge.Session, decodes: list[str]) -> None:
    progress: list[tuple[str, str]] = []
    with pytest.raises(ImageError, match="over the limit of 50000000"):
        session.run(png_claiming_size(100_000, 100_000), "What is this?", max_tokens=2,
                    on_progress=lambda step, phase, *_: progress.append((step, phase)))
    assert decodes == [] and progress == []  # refused from the header: no pixel decoded, nothing evaluated


def test_huge_numpy_array_refused_before_copy() -> None:
    # a broadcast view costs no memory; converting it would need 30 GB
    huge = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (100_000, 100_000, 3))
    with pytest.raises(ImageError, match="100000x100000 pixels is over the limit"):
        load_rgb(huge, max_pixels=LIMIT)


# --------------------------------------------------------------------------------------------
# Accepted forms give the same pixels


INPUT_FORMS: dict[str, Callable[[Path], Any]] = {
    "str": lambda p: str(p),
    "pathlib": lambda p: p,
    "bytes": lambda p: p.read_bytes(),
    "bytearray": lambda p: bytearray(p.read_bytes()),
    "memoryview": lambda p: memoryview(p.read_bytes()),
    "pil": lambda p: Image.open(p),
    "pil-rgb-loaded": lambda p: Image.open(p).convert("RGB"),
}


@pytest.mark.parametrize("form", INPUT_FORMS, ids=list(INPUT_FORMS))
def test_input_forms_load_the_same_pixels(png: Path, form: str) -> None:
    loaded = load_rgb(INPUT_FORMS[form](png), max_pixels=LIMIT)
    assert (loaded.width, loaded.height) == (48, 40)
    np.testing.assert_array_equal(rgb_array(loaded), make_image())


@pytest.mark.parametrize("form", INPUT_FORMS, ids=list(INPUT_FORMS))
def test_input_forms_give_the_same_answer(session: ecso_edge.Session, png: Path, form: str) -> None:
    reference = session.answer(make_image(), "What is this?", max_tokens=4).steps[0].tokens
    assert session.answer(INPUT_FORMS[form](png), "What is this?", max_tokens=4).steps[0].tokens == reference


def test_non_contiguous_array_equals_its_copy() -> None:
    view = make_image(64, 40)[:, ::-1][:, :48]
    assert not view.flags.c_contiguous
    assert load_rgb(view, max_pixels=LIMIT) == load_rgb(view.copy(), max_pixels=LIMIT)


def test_grey_array_is_repeated_into_rgb() -> None:
    grey = make_image()[:, :, 0]
    np.testing.assert_array_equal(rgb_array(load_rgb(grey, max_pixels=LIMIT)), np.stack([grey] * 3, axis=2))


@pytest.mark.parametrize("form", [lambda a: a, _png_bytes, lambda a: Image.fromarray(a)], ids=["numpy", "png", "pil"])
def test_one_pixel_image_runs(session: ecso_edge.Session, form: Callable[[np.ndarray], Any]) -> None:
    r = session.answer(form(make_image(1, 1)), "What is this?", max_tokens=2)
    assert r.stats["image_tokens"] == 16
    assert len(r.steps[0].tokens) == 2


# --------------------------------------------------------------------------------------------
# PIL modes, transparency, EXIF orientation


def _mode_image(mode: str) -> Image.Image:
    rgb = Image.fromarray(make_image())
    if mode in ("I;16", "I"):
        # a 16-bit grey ramp, as Pillow opens a 16-bit PNG
        ramp = (np.arange(48 * 40, dtype=np.uint32).reshape(40, 48) * 34).astype(np.uint16)
        return Image.fromarray(ramp).convert(mode) if mode == "I" else Image.fromarray(ramp)
    return rgb.convert(mode)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "RGBX", "L", "1", "P", "PA", "LA", "La", "RGBa", "CMYK", "YCbCr",
                                  "I;16", "I", "F"])
def test_pil_mode_is_accepted(session: ecso_edge.Session, mode: str) -> None:
    im = _mode_image(mode)
    assert im.mode == mode
    loaded = load_rgb(im, max_pixels=LIMIT)
    assert (loaded.width, loaded.height, len(loaded.data)) == (48, 40, 48 * 40 * 3)
    assert len(session.answer(im, "What is this?", max_tokens=2).steps[0].tokens) == 2


def test_grey_pil_image_becomes_equal_channels() -> None:
    grey = Image.fromarray(make_image()).convert("L")
    np.testing.assert_array_equal(rgb_array(load_rgb(grey, max_pixels=LIMIT)), np.stack([np.asarray(grey)] * 3, axis=2))


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_sixteen_bit_grey_keeps_its_top_eight_bits(mode: str) -> None:
    # Pillow's own conversion clips at 255, which turns a 16-bit photo almost white
    im = _mode_image(mode)
    expected = (np.asarray(im).astype(np.int64) >> 8).astype(np.uint8)
    np.testing.assert_array_equal(rgb_array(load_rgb(im, max_pixels=LIMIT)), np.stack([expected] * 3, axis=2))


def test_sixteen_bit_png_file_keeps_its_top_eight_bits(tmp_path: Path) -> None:
    ramp = (np.arange(48 * 40, dtype=np.uint32).reshape(40, 48) * 34).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    np.testing.assert_array_equal(rgb_array(load_rgb(path, max_pixels=LIMIT))[:, :, 0], (ramp >> 8).astype(np.uint8))


RGBA_PIXELS = np.array([[[255, 0, 0, 255], [255, 0, 0, 0], [0, 0, 255, 128], [10, 20, 30, 255]]], np.uint8)
ON_WHITE = np.array([[[255, 0, 0], [255, 255, 255], [127, 127, 255], [10, 20, 30]]], np.uint8)


@pytest.mark.parametrize(
    "form",
    [lambda a: encode(Image.fromarray(a, "RGBA")), lambda a: Image.fromarray(a, "RGBA"), lambda a: a],
    ids=["png-bytes", "pil", "numpy"],
)
def test_rgba_is_composited_on_white(form: Callable[[np.ndarray], Any]) -> None:
    np.testing.assert_array_equal(rgb_array(load_rgb(form(RGBA_PIXELS), max_pixels=LIMIT)), ON_WHITE)


def test_palette_transparency_is_composited_on_white() -> None:
    im = Image.new("P", (2, 1))
    im.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    im.putdata([0, 1])
    data = encode(im, transparency=1)  # palette entry 1 (green) is transparent
    np.testing.assert_array_equal(rgb_array(load_rgb(data, max_pixels=LIMIT)), [[[255, 0, 0], [255, 255, 255]]])


def _sideways_jpeg() -> bytes:
    # stored 48 wide x 40 high, left half red and right half blue; Orientation 6 says
    # "rotate 90 degrees clockwise to display", so it shows 40 wide x 48 high, red on top
    stored = np.zeros((40, 48, 3), np.uint8)
    stored[:, :24] = (255, 0, 0)
    stored[:, 24:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(Image.fromarray(stored), "JPEG", exif=exif, quality=95)


@pytest.mark.parametrize("form", [lambda b: b, lambda b: Image.open(io.BytesIO(b))], ids=["bytes", "pil"])
def test_exif_orientation_is_honoured(form: Callable[[bytes], Any]) -> None:
    shown = load_rgb(form(_sideways_jpeg()), max_pixels=LIMIT)
    assert (shown.width, shown.height) == (40, 48)
    pixels = rgb_array(shown).astype(int)
    top, bottom = pixels[5, 20], pixels[42, 20]
    assert top[0] > 200 and top[2] < 60, top
    assert bottom[2] > 200 and bottom[0] < 60, bottom


def test_exif_orientation_changes_what_the_model_sees(session: ecso_edge.Session) -> None:
    shown = load_rgb(_sideways_jpeg(), max_pixels=LIMIT)
    assert session.answer(_sideways_jpeg(), "What is this?", max_tokens=4).steps[0].tokens == \
        session.answer(rgb_array(shown), "What is this?", max_tokens=4).steps[0].tokens
