"""Reading and writing image files without silent loss: bit depth and alpha survive a round trip.

:func:`load_image` returns an :class:`ImageFile`: ``pixels`` as floats in [0, 1] ((H, W) grey or
(H, W, 3) RGB, the channels that are inpainted), ``alpha`` ((H, W) in [0, 1] or None) and
``bits`` (8 or 16 per channel, as stored). :func:`write_image` writes pixels at a bit depth with
an optional alpha channel. The alpha channel is carried through unchanged and is never
inpainted: a transparent pixel's colour is data like any other (it is inpainted only where the
mask says), and it stays transparent in the output.

8-bit files and 16-bit grey ones are read and written with Pillow; 16-bit colour PNG/TIFF
(which Pillow truncates to 8 bits) with OpenCV (the ``[compare]`` extra). Writes are atomic and
never target an input file.
"""
from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
from PIL import Image

from .files import UnwritableOutput, atomic_output

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
SIXTEEN_BIT_SUFFIXES = (".png", ".tif", ".tiff")
JPEG_SUFFIXES = (".jpg", ".jpeg")
_OPENCV_HINT = "pip install 'ntk-completion[compare]'"


@dataclasses.dataclass(frozen=True)
class ImageFile:
    """An image as read from a file: ``pixels`` float64 (H, W) or (H, W, 3) in [0, 1];
    ``alpha`` float64 (H, W) in [0, 1] or None; ``bits`` per channel in the file (8 or 16);
    ``format`` Pillow's name of the file format (``'PNG'``, ``'JPEG'``, ...)."""

    pixels: np.ndarray
    alpha: np.ndarray | None = None
    bits: int = 8
    format: str | None = None


def _stored_bits(path: Path, im: Image.Image) -> int:
    """Bits per channel in the file (Pillow reports 16-bit colour as 8-bit modes)."""
    if im.mode.startswith("I;16") or im.mode == "I":
        return 16
    if im.format == "PNG":
        with open(path, "rb") as fh:
            header = fh.read(25)
        return 16 if len(header) == 25 and header[24] == 16 else 8  # IHDR bit depth
    if im.format == "TIFF":
        per_sample = im.tag_v2.get(258, 8)
        return 16 if max(np.atleast_1d(per_sample)) == 16 else 8
    return 8


def _split_alpha(arr: np.ndarray, scale: float):
    """(pixels, alpha or None) as floats in [0, 1] from an integer (H, W (, C)) array."""
    arr = arr.astype(np.float64) / scale
    if arr.ndim == 3 and arr.shape[2] in (2, 4):
        pixels, alpha = arr[:, :, :-1], arr[:, :, -1]
        return pixels[:, :, 0] if pixels.shape[2] == 1 else pixels, alpha
    return arr, None


def _read_with_opencv(path: Path) -> np.ndarray:
    try:
        import cv2
    except ImportError as err:
        raise ValueError(f"{path} has 16-bit colour, which Pillow would truncate to 8 bits; "
                         f"reading it needs OpenCV: {_OPENCV_HINT}") from err
    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ValueError(f"cannot read image file {path}")
    if arr.ndim == 3:  # OpenCV's BGR(A) -> RGB(A)
        arr = arr[:, :, [2, 1, 0, 3][:arr.shape[2]]]
    return arr


def load_image(path) -> ImageFile:
    """Read an image file; see :class:`ImageFile` (palette and 1-bit images become grey or RGB)."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            bits, fmt = _stored_bits(path, im), im.format
            if bits == 16 and not (im.mode.startswith("I;16") or im.mode == "I"):
                pixels, alpha = _split_alpha(_read_with_opencv(path), 65535.0)
            elif bits == 16:
                pixels, alpha = _split_alpha(np.asarray(im), 65535.0)
            else:
                has_alpha = im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info
                grey = im.mode in ("L", "LA", "1", "I", "F") or (
                    im.mode == "P" and im.palette is not None and im.palette.mode == "L")
                target = ("LA" if has_alpha else "L") if grey else ("RGBA" if has_alpha else "RGB")
                pixels, alpha = _split_alpha(np.asarray(im.convert(target)), 255.0)
    except (OSError, ValueError, SyntaxError) as err:
        if isinstance(err, ValueError) and str(path) in str(err):
            raise
        raise ValueError(f"cannot read image file {path}: {err}") from err
    return ImageFile(np.clip(pixels, 0.0, 1.0), alpha, bits, fmt)


def read_image(path) -> np.ndarray:
    """The colour channels of :func:`load_image`: float64 (H, W) or (H, W, 3) in [0, 1]."""
    return load_image(path).pixels


def quantise(image, bits: int = 8) -> np.ndarray:
    """Clip to [0, 1] and round to the ``bits``-bit grid (still floats in [0, 1]): the values a
    file of that depth holds."""
    top = 2**bits - 1
    return np.round(np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0) * top) / top


def to_integers(image, bits: int) -> np.ndarray:
    """Clip to [0, 1] and round to ``bits`` (8 or 16) bit integers: uint8 0-255 or uint16
    0-65535, the values a file of that depth stores."""
    top = 2**bits - 1
    dtype = np.uint16 if bits == 16 else np.uint8
    return np.round(np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0) * top).astype(dtype)


def check_output_suffix(path) -> None:
    """Raise :class:`~completion.files.UnwritableOutput` unless ``path``'s suffix names an image
    format we write."""
    suffix = Path(path).suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise UnwritableOutput(f"cannot write image {path}: unknown suffix {suffix or '(none)'!r}; "
                         f"use one of {', '.join(IMAGE_SUFFIXES)}")


def output_losses(path, bits: int = 8, has_alpha: bool = False) -> list[str]:
    """What writing an image of ``bits`` bits (with alpha) to ``path`` would lose, in words
    (empty when nothing is lost)."""
    suffix = Path(path).suffix.lower()
    losses = []
    if suffix in JPEG_SUFFIXES:
        losses.append("JPEG compression changes pixel values, observed ones too")
        if has_alpha:
            losses.append("JPEG has no alpha channel (dropped)")
    if bits == 16 and suffix not in SIXTEEN_BIT_SUFFIXES:
        losses.append(f"{suffix} stores 8 bits per channel, the input has 16")
    return losses


def _encode(path: Path, image, bits: int, alpha) -> bytes:
    suffix = path.suffix.lower()
    if suffix in JPEG_SUFFIXES:
        alpha = None
    if suffix not in SIXTEEN_BIT_SUFFIXES:
        bits = 8
    arr = to_integers(image, bits)
    if alpha is not None:
        arr = np.dstack([arr, to_integers(alpha, bits)])
    if bits == 16 and arr.ndim == 3:  # 16-bit colour or grey+alpha: Pillow cannot, OpenCV can
        try:
            import cv2
        except ImportError as err:
            raise ValueError(f"writing 16-bit colour {path} needs OpenCV: {_OPENCV_HINT}") from err
        if arr.shape[2] == 2:
            arr = arr[:, :, [0, 0, 0, 1]]
        ok, buf = cv2.imencode(suffix, arr[:, :, [2, 1, 0, 3][:arr.shape[2]]])
        if not ok:
            raise ValueError(f"OpenCV could not encode {path}")
        return buf.tobytes()
    pil = Image.fromarray(arr)
    fh = io.BytesIO()
    options = {"lossless": True} if suffix == ".webp" else {}
    pil.save(fh, format=Image.registered_extensions()[suffix], **options)
    return fh.getvalue()


def write_image(path, image, bits: int = 8, alpha=None) -> None:
    """Write an (H, W) or (H, W, 3) float image in [0, 1] (or a PIL image, as is) atomically at
    ``bits`` (8 or 16; formats that store 8 bits only get 8) with an optional (H, W) ``alpha``
    in [0, 1]; the format follows the file suffix (WebP is written lossless)."""
    path = Path(path)
    check_output_suffix(path)
    if isinstance(image, Image.Image):
        fh = io.BytesIO()
        image.save(fh, format=Image.registered_extensions()[path.suffix.lower()])
        data = fh.getvalue()
    else:
        data = _encode(path, image, bits, alpha)
    with atomic_output(path, "wb") as fh:
        fh.write(data)
