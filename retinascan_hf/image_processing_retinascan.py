"""Fundus image processor: decode safely, crop to the circular field of view, pad, resize, normalise.

Fundus cameras frame the retina as a bright disc on black, often with notch markers, dim vignetted
edges and an off-centre disc; public data sets come in every PIL mode, with EXIF rotations and as
12-16 MP JPEGs. This processor turns all of that into CLIP-ready tensors, and turns inputs it cannot
use into typed errors that name the input instead of crashing deep inside PIL or torch.

It follows transformers' image-processor conventions where they apply to fundus photographs: PIL images,
numpy arrays and torch tensors (HW, HWC or CHW; a 4-D array or tensor is a batch), and the standard per-call
overrides (`size`, `resample`, `do_convert_rgb`, `do_rescale`, `rescale_factor`, `do_normalize`, `image_mean`,
`image_std`, `input_data_format`, `data_format`, `return_tensors`). Its output always has 3 channels, because the
CLIP backbone takes RGB: `do_convert_rgb=False` refuses non-RGB input rather than passing 1 or 4 channels on.

This file is copied verbatim into model repositories as remote code: it imports third-party packages, the
standard library and (relatively) `validation_retinascan`.
"""

from __future__ import annotations

import copy
import functools
import http.client
import io
import math
import numbers
import os
import re
import socket
import ssl
import time
import urllib.request
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

import numpy as np
from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ChannelDimension
from transformers.utils import IMAGE_PROCESSOR_NAME, TensorType, is_torch_tensor

from .validation_retinascan import InvalidArtefactError, check_choice, check_flag, check_number, check_numbers

FundusInput = str | os.PathLike | bytes | Image.Image | np.ndarray


class RetinaScanInputError(ValueError):
    """Base class of every "this input cannot be graded" error; callers can catch this one type."""


class InvalidImageError(RetinaScanInputError):
    """The input is not a decodable image: missing, corrupt, truncated, empty or too small."""


class ImageTooLargeError(InvalidImageError):
    """The image declares more pixels than allowed: refused before decoding (decompression bomb)."""


class NoFundusFoundError(RetinaScanInputError):
    """The image decoded but shows no visible fundus (e.g. a black or nearly black frame)."""


def describe_input(source: Any) -> str:
    """A short, human-readable name for an input, used in every error message."""
    if isinstance(source, (str, os.PathLike)):
        return repr(os.fspath(source))
    if isinstance(source, Image.Image):
        return f"<PIL image mode={source.mode} size={source.size}>"
    if isinstance(source, np.ndarray):
        return f"<array shape={source.shape} dtype={source.dtype}>"
    if is_torch_tensor(source):
        return f"<tensor shape={tuple(source.shape)} dtype={source.dtype}>"
    if isinstance(source, bytes):
        return f"<{len(source)} bytes>"
    return f"<{type(source).__name__}>"


class ImageDownloadError(InvalidImageError):
    """A URL input could not be fetched: HTTP error, refused scheme, over the size cap or past the deadline."""


# Only these are fetched; any other `scheme://` (notably file://, which would read local files named by whoever
# supplies the URL) is refused by name rather than mistaken for a local path.
DOWNLOAD_SCHEMES: tuple[str, ...] = ("http", "https")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_DOWNLOAD_CHUNK = 1 << 16


class _Deadline:
    """One total time budget shared by every socket operation of a download (connect, headers, body).

    A socket timeout bounds each read, so a server sending a byte every half second could hold a call for
    hours; every read here first checks, and then waits at most, the time that is left.
    """

    def __init__(self, seconds: float):
        self.seconds, self.end = seconds, time.monotonic() + seconds

    def remaining(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"download exceeded its total deadline of {self.seconds:g} s")
        return left


class _DeadlineSocket(socket.socket):
    """A connected TCP socket whose reads never outlive the download's deadline."""

    deadline: _Deadline

    def recv_into(self, buffer, nbytes: int = 0, flags: int = 0) -> int:
        self.settimeout(self.deadline.remaining())
        return super().recv_into(buffer, nbytes, flags)

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        self.settimeout(self.deadline.remaining())
        return super().recv(bufsize, flags)


class _DeadlineSSLSocket(ssl.SSLSocket):
    """The TLS counterpart: TLS reads bypass the TCP socket's Python methods, so the check sits here."""

    def recv_into(self, buffer, nbytes: int | None = None, flags: int = 0) -> int:
        self.settimeout(self.context.deadline.remaining())
        return super().recv_into(buffer, nbytes, flags)


class _DeadlineHTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args, deadline: _Deadline, **kwargs):
        super().__init__(*args, **kwargs)
        self.deadline = deadline

    def connect(self) -> None:
        super().connect()
        raw = self.sock
        self.sock = _DeadlineSocket(raw.family, raw.type, raw.proto, fileno=raw.detach())
        self.sock.deadline = self.deadline


class _DeadlineHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline):
        super().__init__()
        self.deadline = deadline

    def http_open(self, request: urllib.request.Request):
        return self.do_open(functools.partial(_DeadlineHTTPConnection, deadline=self.deadline), request)


def _read_url(url: str, timeout: float, max_bytes: int) -> bytes:
    """Fetch `url` within `timeout` seconds in total and at most `max_bytes` bytes, with the standard library.

    Redirects and proxies work as in `urllib`; every failure is an [`ImageDownloadError`] naming the URL.
    """
    deadline = _Deadline(timeout)
    context = ssl.create_default_context()
    context.sslsocket_class = _DeadlineSSLSocket
    context.deadline = deadline
    opener = urllib.request.build_opener(_DeadlineHTTPHandler(deadline), urllib.request.HTTPSHandler(context=context))
    request = urllib.request.Request(url, headers={"User-Agent": "retinascan"})
    too_large = f"Refusing to download {url!r}: larger than max_download_bytes={max_bytes:,}."
    try:
        with opener.open(request, timeout=deadline.remaining()) as response:
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise ImageDownloadError(too_large)
            body, received = [], 0
            while chunk := response.read1(_DOWNLOAD_CHUNK):
                received += len(chunk)
                if received > max_bytes:
                    raise ImageDownloadError(too_large)
                body.append(chunk)
    except ImageDownloadError:
        raise
    except (OSError, http.client.HTTPException) as error:  # URLError, HTTPError and timeouts are OSErrors
        raise ImageDownloadError(f"Could not download {url!r}: {error}") from error
    return b"".join(body)


def _open(source: FundusInput, timeout: float, max_download_bytes: int) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, bytes):
        return Image.open(io.BytesIO(source))
    path = os.fspath(source)
    scheme = _SCHEME.match(path)
    if scheme:
        name = scheme.group(1).lower()
        if name not in DOWNLOAD_SCHEMES:
            raise ImageDownloadError(
                f"Unsupported URL scheme {name}:// in {path!r}: only {', '.join(DOWNLOAD_SCHEMES)} URLs are "
                "fetched; pass a local file as a plain path."
            )
        url = name + path[len(scheme.group(1)) :]  # schemes are case-insensitive (RFC 3986)
        return Image.open(io.BytesIO(_read_url(url, timeout, max_download_bytes)))
    if not os.path.isfile(path):
        raise InvalidImageError(f"Image file not found: {describe_input(source)}.")
    return Image.open(path)


def _rescale_to_uint8(array: np.ndarray, full_scale: float) -> np.ndarray:
    """The one rounding rule from wider pixel formats to 8 bits, shared by decoded files and caller arrays, so
    a 16-bit PNG and the numpy array of its pixels give the same picture."""
    return np.clip(np.round(array.astype(np.float64) / full_scale * 255.0), 0, 255).astype(np.uint8)


def _tensor_to_array(tensor: Any) -> np.ndarray:
    """A torch tensor's values as a numpy array (on the CPU; half precision widened, which numpy lacks)."""
    tensor = tensor.detach().cpu()
    if tensor.is_floating_point() and tensor.element_size() < 4:
        tensor = tensor.float()
    return tensor.numpy()


def _array_to_pil(array: np.ndarray, name: str, input_data_format: str | None = None) -> Image.Image:
    """Accept HW, HWC or CHW arrays of uint8, uint16, other integers in [0, 65535] or floats in [0, 1].

    `input_data_format` (`"channels_first"` / `"channels_last"`) says where the channels of a 3-D array are; by
    default a leading axis of 1, 3 or 4 that is not also the last axis size is read as channels.
    """
    channels_first = array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4)
    if input_data_format is not None:
        channels_first = array.ndim == 3 and ChannelDimension(input_data_format) == ChannelDimension.FIRST
    if channels_first:
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise InvalidImageError(f"Cannot read {name} as an image: expected HW, HWC or CHW with 1, 3 or 4 channels.")
    if array.size == 0:
        raise InvalidImageError(f"Image {name} is empty.")
    if array.dtype == np.uint8:
        pass
    elif array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0.0 or array.max() > 1.0:
            raise InvalidImageError(f"Float image {name} must hold finite values in [0, 1].")
        array = _rescale_to_uint8(array, 1.0)
    elif np.issubdtype(array.dtype, np.integer):
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 65535:
            raise InvalidImageError(f"Integer image {name} must hold values in [0, 65535], got {low}..{high}.")
        wide = array.dtype == np.uint16 or high > 255  # 16-bit data, scaled like a 16-bit file
        array = _rescale_to_uint8(array, 65535.0) if wide else array.astype(np.uint8)
    else:
        raise InvalidImageError(f"Unsupported array dtype for image {name}: {array.dtype}.")
    return Image.fromarray(np.ascontiguousarray(array))


def _full_scale(peak: float, mode: str) -> float:
    """The white level of an "I"/"F" image: the smallest usual range (1.0, 8 or 16 bit) holding its peak."""
    for scale in ((1.0,) if mode == "F" else ()) + (255.0, 65535.0):
        if peak <= scale:
            return scale
    return peak


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; transparent areas become black, like a fundus background."""
    if image.mode == "RGB":
        return image
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode.startswith("I") or image.mode == "F":
        # 16/32-bit greyscale: scale by the data's *format* range, not its own maximum, so dark stays dark.
        array = np.asarray(image)
        full_scale = 65535.0 if image.mode.startswith("I;16") else _full_scale(float(array.max()), image.mode)
        return Image.fromarray(_rescale_to_uint8(array, full_scale)).convert("RGB")
    return image.convert("RGB")


def _is_undecoded(image: Image.Image) -> bool:
    """Whether `image` is a file PIL has opened but not decoded yet (decoding it is what costs memory)."""
    return isinstance(image, ImageFile.ImageFile) and bool(image.tile)


# JPEG's decoder scales by 1/2, 1/4 or 1/8 while decoding (DCT scaling), so reductions stop at 8. MPO is JPEG
# with more frames (what many cameras write); PIL opens its first frame like a JPEG.
MAX_REDUCTION = 8
DCT_SCALED_FORMATS = ("JPEG", "MPO")


def _reduced_pixels(width: int, height: int, factor: int) -> int:
    """Pixels after a reduction by `factor` (PIL's draft and `Image.reduce` both round each side up)."""
    return -(-width // factor) * -(-height // factor)


def reduction_factor(width: int, height: int, reduce_to: int | None, max_decoded_pixels: int | None = None) -> int:
    """The integer reduction of a `width` x `height` picture, one rule for every input form.

    The largest power of two up to 8 that keeps the shorter side at least `reduce_to` (1 without a target), raised
    (up to 8) while the reduced picture would exceed `max_decoded_pixels`. These are the scales JPEG's decoder
    reaches for free: a JPEG file is decoded directly at this size (draft mode), every other input is decoded
    whole and reduced by the same factor with a box filter, so the forms of one picture differ only as DCT
    scaling differs from box averaging (on the EyePACS camera originals: 0.1-0.3 grey levels on average).
    """
    factor = 1
    if reduce_to:
        while factor < MAX_REDUCTION and min(width, height) // (2 * factor) >= reduce_to:
            factor *= 2
    if max_decoded_pixels is not None:
        while factor < MAX_REDUCTION and _reduced_pixels(width, height, factor) > max_decoded_pixels:
            factor *= 2
    return factor


def _decode_reduced(image: Image.Image, name: str, factor: int, max_decoded_pixels: int | None, owned: bool) -> bool:
    """Set a file we opened to decode reduced by `factor` (JPEG draft mode); whether it now does.

    Draft mode reconfigures the decoder in place: never done to an image the caller opened (`owned=False`). A file
    above the pixel budget that cannot be reduced while decoding is refused: no format but JPEG can, so a 96 MP PNG
    of 280 KB would otherwise cost about 1 GB of memory.
    """
    width, height = image.size
    drafted = (
        factor > 1
        and owned
        and image.format in DCT_SCALED_FORMATS
        and image.draft("RGB", (width // factor, height // factor)) is not None
    )
    if max_decoded_pixels is None or width * height <= max_decoded_pixels:
        return drafted
    refusal = (
        f"Refusing to decode {name}: {width}x{height} = {width * height:,} pixels exceeds "
        f"max_decoded_pixels={max_decoded_pixels:,}"
    )
    if not drafted:
        reducible = image.format in DCT_SCALED_FORMATS and not owned
        hint = "pass the file itself, which is decoded at reduced size" if reducible else "downscale it"
        raise ImageTooLargeError(
            f"{refusal}, and a {image.format or 'decoded'} image cannot be reduced while decoding ({hint})."
        )
    if image.width * image.height > max_decoded_pixels:
        raise ImageTooLargeError(f"{refusal}, even at the JPEG decoder's 1/{MAX_REDUCTION} scale.")
    return drafted


def _upright(image: Image.Image) -> Image.Image:
    """Apply an EXIF orientation (reading the tag decodes no pixels); anything else stays the same object."""
    if image.getexif().get(ExifTags.Base.Orientation, 1) in range(2, 9):
        return ImageOps.exif_transpose(image)
    return image


def load_fundus_image(
    source: FundusInput,
    *,
    reduce_to: int | None = None,
    max_image_pixels: int | None = None,
    max_decoded_pixels: int | None = None,
    min_image_size: int = 8,
    timeout: float = 30.0,
    max_download_bytes: int = 64 * 2**20,
    do_convert_rgb: bool = True,
    input_data_format: str | None = None,
) -> Image.Image:
    """Decode `source` into an upright RGB PIL image, or raise a [`RetinaScanInputError`] naming it.

    Every input form ends in the same picture, so a path, its bytes, the PIL image `datasets` yields, a numpy
    array and a tensor of one photograph are graded alike: each is reduced by the same integer factor
    ([`reduction_factor`]: a power of two up to 8 that keeps at least `reduce_to` pixels on the shorter side).
    JPEG files and bytes get it from the decoder (DCT scaling, fast), everything else (images already decoded,
    other formats) from a box filter after a full decode. A file above the pixel budget `max_decoded_pixels` is
    decoded reduced to fit it if it is a JPEG and refused otherwise ([`ImageTooLargeError`]), as is anything
    declaring more than `max_image_pixels`. Any PIL mode is converted to RGB unless `do_convert_rgb=False`, which
    refuses non-RGB images instead. `input_data_format` is the channel layout of array and tensor inputs.
    """
    name = describe_input(source)
    if is_torch_tensor(source):
        source = _tensor_to_array(source)
    if isinstance(source, np.ndarray):
        image = _array_to_pil(source, name, input_data_format)
    elif isinstance(source, (str, os.PathLike, bytes, Image.Image)):
        try:
            with warnings.catch_warnings():
                # Pillow's global warning level (~89 MP) is not ours: `max_image_pixels` is checked just below,
                # still before any pixel is decoded. Pillow's hard error (~179 MP) stays a refusal.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = _open(source, timeout, max_download_bytes)
        except Image.DecompressionBombError as error:
            raise ImageTooLargeError(f"Refusing to decode {name}: {error}") from error
        except UnidentifiedImageError as error:
            raise InvalidImageError(f"{name} is not a readable image file.") from error
        except RetinaScanInputError:
            raise
        except OSError as error:
            raise InvalidImageError(f"Could not read {name}: {error}") from error
    else:
        raise InvalidImageError(
            f"Unsupported input {name}: pass a path, URL, bytes, PIL image, numpy array or torch tensor."
        )

    width, height = image.size
    if max_image_pixels is not None and width * height > max_image_pixels:
        raise ImageTooLargeError(
            f"Refusing to decode {name}: {width}x{height} = {width * height:,} pixels exceeds "
            f"max_image_pixels={max_image_pixels:,} (possible decompression bomb)."
        )
    if min(width, height) < min_image_size:
        raise InvalidImageError(f"Image {name} is {width}x{height}; at least {min_image_size} px per side is needed.")
    try:
        factor = reduction_factor(width, height, reduce_to, max_decoded_pixels)
        owned = not isinstance(source, Image.Image)
        drafted = _is_undecoded(image) and _decode_reduced(image, name, factor, max_decoded_pixels, owned)
        image = _upright(image)
        image.load()
        if not do_convert_rgb and image.mode != "RGB":
            raise InvalidImageError(
                f"Image {name} has mode {image.mode}, not RGB, and do_convert_rgb=False: the backbone takes 3 channels."
            )
        image = _to_rgb(image)
    except OSError as error:  # truncated or corrupt pixel data only shows up when decoding
        raise InvalidImageError(f"Could not decode {name}: {error}") from error
    return image.reduce(factor) if factor > 1 and not drafted else image


def _uint8_percentile(values: np.ndarray, percent: float) -> float:
    """`np.percentile(values, percent)` (linear interpolation) of uint8 `values`, from a 256-bin histogram: a
    seventh of the time of the sort-based one on a 256 px frame, which every graded image pays for."""
    cumulative = np.cumsum(np.bincount(values.ravel(), minlength=256))
    rank = (values.size - 1) * percent / 100.0
    below = math.floor(rank)
    low, high = np.searchsorted(cumulative, [below, min(below + 1, values.size - 1)], side="right")
    return float(low + (rank - below) * (high - low))


def find_fundus_box(
    image: Image.Image,
    *,
    threshold: float = 0.06,
    min_line_fraction: float = 0.1,
    min_fundus_fraction: float = 0.1,
    min_contrast: float = 0.02,
    analysis_size: int = 256,
) -> tuple[int, int, int, int]:
    """Bounding box `(left, top, right, bottom)` of the bright fundus disc in `image`.

    Works on a small copy. A pixel is "fundus" when its brightest channel exceeds a threshold that adapts
    to the image (a fraction of the 99th percentile, never below `threshold`), which keeps dim, vignetted
    edges. Rows and columns count as inside the disc only if at least `min_line_fraction` of the longest
    chord is bright: notch markers and text overlays are too short to pass, while the disc's top and
    bottom tips lose only a sliver. A frame whose brightness hardly varies (standard deviation below
    `min_contrast`, on a 0-1 scale) shows no fundus even if it is bright: a white or grey frame must be
    flagged, not graded.
    """
    # An integer box-filter reduction: no copy of a full-size frame, and a fraction of a resampling filter's cost
    # (this runs on every image, and a draft-decoded camera original is still ~1 MP).
    factor = -(-max(image.size) // analysis_size)
    small = image.reduce(factor) if factor > 1 else image
    rgb = np.asarray(small)
    brightest = np.maximum(np.maximum(rgb[..., 0], rgb[..., 1]), rgb[..., 2])
    brightness = brightest.astype(np.float32) / 255.0
    level = max(threshold, 0.15 * _uint8_percentile(brightest, 99) / 255.0)
    mask = brightness > level
    if float(brightness.std()) < min_contrast:
        raise NoFundusFoundError("a uniform frame (blank, over- or under-exposed)")
    rows, cols = mask.sum(axis=1), mask.sum(axis=0)
    longest = max(int(rows.max()), int(cols.max()))
    if longest < min_fundus_fraction * min(mask.shape):
        raise NoFundusFoundError("no bright disc")
    row_idx = np.flatnonzero(rows >= min_line_fraction * longest)
    col_idx = np.flatnonzero(cols >= min_line_fraction * longest)
    if row_idx.size == 0 or col_idx.size == 0:  # e.g. a thin bright stripe: long in one direction only
        raise NoFundusFoundError("no disc-shaped bright region")
    scale_x, scale_y = image.width / small.width, image.height / small.height
    return (
        int(np.floor(col_idx[0] * scale_x)),
        int(np.floor(row_idx[0] * scale_y)),
        int(np.ceil((col_idx[-1] + 1) * scale_x)),
        int(np.ceil((row_idx[-1] + 1) * scale_y)),
    )


def resize_into_square(
    image: Image.Image,
    box: tuple[int, int, int, int],
    side: int,
    resample: int = Image.Resampling.BICUBIC,
    reducing_gap: float | None = None,
) -> Image.Image:
    """The `box` region of `image` resized so its longer side is `side`, centred on a black `side` x `side` square.

    The same picture as resizing `pad_to_square(image.crop(box))`, made without building the padded full-size
    square: one resampling pass reads the region in place, and only the small output is padded. `reducing_gap`
    is PIL's: shrink by an integer factor (box filter) first, so the filter's last step is at most that ratio.
    """
    left, top, right, bottom = box
    scale = side / max(right - left, bottom - top)
    size = (max(1, min(side, round((right - left) * scale))), max(1, min(side, round((bottom - top) * scale))))
    resized = image.resize(size, resample=Image.Resampling(resample), box=box, reducing_gap=reducing_gap)
    if size == (side, side):
        return resized
    canvas = Image.new("RGB", (side, side), (0, 0, 0))
    canvas.paste(resized, ((side - size[0]) // 2, (side - size[1]) // 2))
    return canvas


def pad_to_square(image: Image.Image) -> Image.Image:
    """Centre `image` on a black square, so resizing never distorts the round fundus."""
    side = max(image.size)
    if image.width == image.height:
        return image
    canvas = Image.new("RGB", (side, side), (0, 0, 0))
    canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return canvas


# Gradability analysis sizes: the field of view is fitted on a box-filtered 64 px copy (which averages away
# the speckled backgrounds of contrast-enhanced photographs), focus and exposure are measured at 256 px.
FOV_ANALYSIS_SIZE = 64
FOCUS_ANALYSIS_SIZE = 256
_MIN_CIRCLE_POINTS = 12


def _fitted_size(size: tuple[int, int], longest: int) -> tuple[int, int]:
    width, height = size
    scale = min(1.0, longest / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _otsu_level(values: np.ndarray) -> float:
    """Otsu's threshold (on a 0-1 scale): the brightness that best separates a dark surround from a bright disc."""
    histogram, edges = np.histogram(values, bins=64, range=(0.0, 1.0))
    weights = histogram / max(histogram.sum(), 1)
    below = np.cumsum(weights)
    mean_below = np.cumsum(weights * (edges[:-1] + edges[1:]) / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mean_below[-1] * below - mean_below) ** 2 / (below * (1.0 - below))
    return float(edges[int(np.argmax(np.nan_to_num(between))) + 1])


def _fit_circle(mask: np.ndarray) -> tuple[float, float, float] | None:
    """`(cx, cy, r)` of the round bright region of `mask`, or `None` if nothing round enough is there.

    A least-squares (Kasa) circle through the two ends of every bright row and column run, refitted without
    outliers; ends on the frame's border are skipped, since cameras clip the disc there.
    """
    points = []
    for transposed in (False, True):
        grid = mask.T if transposed else mask
        lines = np.flatnonzero(grid.any(axis=1))
        first = grid[lines].argmax(axis=1)
        last = grid.shape[1] - 1 - grid[lines, ::-1].argmax(axis=1)
        for ends, inner in ((first, first > 0), (last + 1, last < grid.shape[1] - 1)):
            pairs = np.stack([ends[inner], lines[inner] + 0.5], axis=1).astype(np.float64)
            points.append(pairs[:, ::-1] if transposed else pairs)
    points = np.concatenate(points)
    circle = None
    for _ in range(4):
        if len(points) < _MIN_CIRCLE_POINTS:
            return circle
        design = np.column_stack([points, np.ones(len(points))])
        (d, e, f), *_ = np.linalg.lstsq(design, -(points**2).sum(axis=1), rcond=None)
        cx, cy = -d / 2, -e / 2
        if cx * cx + cy * cy - f <= 0:
            return None
        circle = (cx, cy, float(np.sqrt(cx * cx + cy * cy - f)))
        residuals = np.abs(np.hypot(points[:, 0] - cx, points[:, 1] - cy) - circle[2])
        keep = residuals <= max(1.0, 2.5 * float(np.median(residuals)))
        if keep.all():
            break
        points = points[keep]
    return circle


@dataclass
class FundusQuality:
    """Gradability measurements of one decoded picture; see [`assess_fundus_quality`].

    Attributes:
        field_of_view_found: a round bright region was fitted (a fundus camera's field of view).
        field_of_view_radius: its radius as a fraction of the picture's shorter side.
        field_of_view_coverage: fraction of the fitted disc brighter than the background level.
        surround_brightness: mean brightness outside the disc / inside it: about 0 for a camera's black surround,
            about 1 when the "disc" is just part of a full-frame picture.
        focus: standard deviation of the Laplacian of luminance inside the disc, relative to its mean luminance:
            vessels and lesion edges make it large; a defocused, flat or smoothly shaded disc has almost none.
        overexposed_fraction, underexposed_fraction: fractions of the disc at near-white / near-black luminance.
    """

    field_of_view_found: bool
    field_of_view_radius: float = 0.0
    field_of_view_coverage: float = 0.0
    surround_brightness: float = 1.0
    focus: float = 0.0
    overexposed_fraction: float = 0.0
    underexposed_fraction: float = 0.0


def _squared_radial_distance(shape: tuple[int, ...], cx: float, cy: float, radius: float) -> np.ndarray:
    """Squared distance of every pixel centre from `(cx, cy)`, in units of `radius`, float32 `[H, W]`.

    Squared, so disc membership needs no square root, and separable, so the grid costs one broadcast add of a
    column and a row: this runs on every image the pipeline grades.
    """
    rows = ((np.arange(shape[0], dtype=np.float32) + np.float32(0.5) - np.float32(cy)) / np.float32(radius)) ** 2
    cols = ((np.arange(shape[1], dtype=np.float32) + np.float32(0.5) - np.float32(cx)) / np.float32(radius)) ** 2
    return rows[:, None] + cols[None, :]


def assess_fundus_quality(image: Image.Image, *, threshold: float = 0.06) -> FundusQuality:
    """Measure field of view, focus and exposure of an RGB picture (a few ms: small copies only)."""
    small = image.resize(_fitted_size(image.size, FOV_ANALYSIS_SIZE), Image.Resampling.BOX)
    brightness = np.asarray(small).max(axis=-1).astype(np.float32) / np.float32(255.0)  # max before converting
    bright = brightness > max(threshold, _otsu_level(brightness))
    circle = _fit_circle(bright)
    if circle is None:
        return FundusQuality(field_of_view_found=False)
    cx, cy, radius = circle
    distance = _squared_radial_distance(bright.shape, cx, cy, radius)
    inside, outside = distance < 0.93**2, distance > 1.07**2
    if inside.sum() < 16 or outside.mean() < 0.02:  # no surround left to see: not a fundus camera's frame
        return FundusQuality(field_of_view_found=False)

    detail = image.resize(_fitted_size(image.size, FOCUS_ANALYSIS_SIZE), Image.Resampling.BILINEAR)
    luminance = np.asarray(detail.convert("L"), np.float32) / 255.0
    scale = luminance.shape[1] / bright.shape[1]
    detail_distance = _squared_radial_distance(luminance.shape, cx * scale, cy * scale, radius * scale)
    laplacian = (
        luminance[:-2, 1:-1] + luminance[2:, 1:-1] + luminance[1:-1, :-2] + luminance[1:-1, 2:]
    ) - 4.0 * luminance[1:-1, 1:-1]
    core = detail_distance[1:-1, 1:-1] < 0.85**2
    disc = luminance[detail_distance < 0.93**2]
    focus = float(laplacian[core].std() / max(float(luminance[1:-1, 1:-1][core].mean()), 1e-3)) if core.any() else 0.0
    return FundusQuality(
        field_of_view_found=True,
        field_of_view_radius=float(radius / min(bright.shape)),
        field_of_view_coverage=float(bright[inside].mean()),
        surround_brightness=float(brightness[outside].mean() / max(float(brightness[inside].mean()), 1e-6)),
        focus=focus,
        overexposed_fraction=float((disc > 0.98).mean()) if disc.size else 0.0,
        underexposed_fraction=float((disc < 0.04).mean()) if disc.size else 1.0,
    )


@dataclass
class PreparedFundus:
    """One input as the processor prepared it: the model's picture and its gradability (see `prepare`).

    Attributes:
        image: the RGB picture the model sees, before normalisation.
        quality: the measurements, `None` when the processor's `do_quality_check` is off.
        problems: why the picture should not be graded, in words; empty when it passes.
    """

    image: Image.Image
    quality: FundusQuality | None
    problems: list[str]


class RetinaScanImageProcessorKwargs(TypedDict, total=False):
    """The per-call overrides `RetinaScanImageProcessor.preprocess` accepts (transformers' `valid_kwargs`): the
    standard image-processor options that apply to a square RGB output, plus `do_crop_fundus` and `timeout`.
    Safety limits (`max_image_pixels`, `min_image_size`) and the fundus detector's settings are set per processor,
    not per call."""

    do_convert_rgb: bool
    size: int | dict[str, int]
    resample: int
    do_crop_fundus: bool
    do_rescale: bool
    rescale_factor: float
    do_normalize: bool
    image_mean: float | Sequence[float]
    image_std: float | Sequence[float]
    input_data_format: str | ChannelDimension | None
    data_format: str | ChannelDimension
    return_tensors: str | TensorType | None
    timeout: float | None


# Options of one call that are not processor attributes (besides `return_tensors`).
_CALL_ONLY_OPTIONS = ("input_data_format", "data_format", "timeout")


def _per_channel(value: Any, name: str, **bounds: Any) -> list[float]:
    """A normalisation statistic as 3 floats (one per RGB channel); a single number applies to all three."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        value = [value] * 3
    return [float(item) for item in check_numbers(name, value, length=3, **bounds)]


def _as_batch(images: Any) -> list:
    """One input, a list of inputs, or a 4-D array/tensor (a batch along its first axis), as a list."""
    if isinstance(images, (list, tuple)):
        return list(images)
    if (isinstance(images, np.ndarray) or is_torch_tensor(images)) and images.ndim == 4:
        return list(images)
    return [images]


class RetinaScanImageProcessor(BaseImageProcessor):
    r"""Turns fundus photographs into normalised `pixel_values` for a RetinaScan (CLIP) backbone.

    Every argument below can also be given to a single call (see [`RetinaScanImageProcessorKwargs`]), except the
    safety limits, the fundus detector's and the quality check's settings. Every value is checked (type and range)
    when the processor is built or loaded: a tampered `preprocessor_config.json` fails there, naming the file and
    the field, not on the first image.

    Args:
        size (`dict` or `int`, defaults to `{"height": 224, "width": 224}`):
            Output size; square, matching the backbone's `image_size` (at most 2048).
        do_crop_fundus (`bool`, defaults to `True`):
            Crop to the circular field of view before padding and resizing.
        fundus_threshold (`float`, defaults to 0.06):
            Lowest brightness (0-1, brightest channel) that counts as fundus.
        min_fundus_fraction (`float`, defaults to 0.1):
            The disc must span at least this fraction of the shorter side, else [`NoFundusFoundError`].
        min_fundus_contrast (`float`, defaults to 0.02):
            A frame whose brightness varies less (standard deviation, 0-1 scale) is blank: [`NoFundusFoundError`].
        resample (`int`, defaults to `PIL.Image.BICUBIC`):
            Resampling filter for the final resize.
        do_convert_rgb (`bool`, defaults to `True`):
            Convert any image mode to RGB (transparency becomes black); `False` refuses non-RGB images.
        do_rescale (`bool`, defaults to `True`), rescale_factor (`float`, defaults to `1/255`):
            Scale 8-bit pixel values to [0, 1] before normalisation.
        do_normalize (`bool`, defaults to `True`), image_mean, image_std:
            CLIP normalisation (OpenAI CLIP statistics by default); 3 values each, or one for all channels; every
            `image_std` entry must be positive.
        max_image_pixels (`int`, defaults to 100_000_000):
            Images declaring more pixels are refused before decoding ([`ImageTooLargeError`]).
        max_decoded_pixels (`int`, defaults to 40_000_000):
            Pixel budget of one decode. Larger JPEG files are decoded at 1/2, 1/4 or 1/8 scale to stay within it;
            larger files of other formats are refused ([`ImageTooLargeError`]): a 96 MP PNG of 280 KB would
            otherwise cost about 1 GB of memory.
        min_image_size (`int`, defaults to 8):
            Smallest accepted side, in pixels.
        max_download_bytes (`int`, defaults to 67_108_864):
            URL inputs larger than this (64 MiB) are refused ([`ImageDownloadError`]).
        download_timeout (`float`, defaults to 30.0):
            Total seconds one URL download may take (connection, headers and body together); the pipeline's
            `timeout=` overrides it per call.
        do_quality_check (`bool`, defaults to `True`):
            Measure gradability in [`prepare`] (the pipeline flags failing pictures `gradable: False`).
        min_fov_radius (`float`, defaults to 0.25):
            Smallest radius of the round field of view, as a fraction of the picture's shorter side.
        max_surround_brightness (`float`, defaults to 0.4):
            Largest mean brightness outside the field of view relative to inside (cameras frame it on black).
        min_fov_coverage (`float`, defaults to 0.4):
            Smallest fraction of the field of view brighter than the background.
        min_focus (`float`, defaults to 0.025):
            Smallest relative Laplacian contrast inside the field of view (see [`FundusQuality`]).
        max_overexposed_fraction, max_underexposed_fraction (`float`, defaults to 0.5):
            Largest fractions of the field of view that may be near white / near black.
    """

    model_input_names = ["pixel_values"]
    valid_kwargs = RetinaScanImageProcessorKwargs
    # Decoded images are reduced to at least twice the output size: the fundus crop can be smaller than the
    # frame, and the final resize then still downsamples (sharper than upsampling a minimal decode).
    DECODE_OVERSAMPLING = 2
    MAX_OUTPUT_SIZE = 2048
    # The final resize first shrinks the fundus by an integer factor with a box filter whenever the bicubic step
    # would still shrink it more than 1.5x (a ~750 px crop of a camera original: 2x box, then 1.67x bicubic).
    # Half the cost of one bicubic pass (3.1 -> 1.4 ms CPU per camera original), for a mean difference of 0.23
    # grey levels (of 255) to it: measured with benchmarks/ (processor row) on eyepacs-originals.
    RESIZE_REDUCING_GAP = 1.5
    # Version of the pictures this code makes from given settings: bump it whenever the same settings give other
    # pixels, so that features cached from the old pictures are not reused (the feature cache keys on it).
    # 2: one power-of-two reduction for every input form (JPEG draft = box filter), fundus box on a box-filter
    # reduction, one resize of the crop box with a reducing gap.
    PIXELS_VERSION = 2

    def __init__(
        self,
        size: dict[str, int] | int | None = None,
        do_crop_fundus: bool = True,
        fundus_threshold: float = 0.06,
        min_fundus_fraction: float = 0.1,
        min_fundus_contrast: float = 0.02,
        resample: int = Image.Resampling.BICUBIC,
        do_convert_rgb: bool = True,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean: float | Sequence[float] | None = None,
        image_std: float | Sequence[float] | None = None,
        max_image_pixels: int = 100_000_000,
        max_decoded_pixels: int = 40_000_000,
        min_image_size: int = 8,
        max_download_bytes: int = 64 * 2**20,
        download_timeout: float = 30.0,
        do_quality_check: bool = True,
        min_fov_radius: float = 0.25,
        max_surround_brightness: float = 0.4,
        min_fov_coverage: float = 0.4,
        min_focus: float = 0.025,
        max_overexposed_fraction: float = 0.5,
        max_underexposed_fraction: float = 0.5,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.size = 224 if size is None else size
        self.do_crop_fundus = do_crop_fundus
        self.fundus_threshold = fundus_threshold
        self.min_fundus_fraction = min_fundus_fraction
        self.min_fundus_contrast = min_fundus_contrast
        self.resample = resample
        self.do_convert_rgb = do_convert_rgb
        self.do_rescale = do_rescale
        self.rescale_factor = rescale_factor
        self.do_normalize = do_normalize
        self.image_mean = OPENAI_CLIP_MEAN if image_mean is None else image_mean
        self.image_std = OPENAI_CLIP_STD if image_std is None else image_std
        self.max_image_pixels = max_image_pixels
        self.max_decoded_pixels = max_decoded_pixels
        self.min_image_size = min_image_size
        self.max_download_bytes = max_download_bytes
        self.download_timeout = download_timeout
        self.do_quality_check = do_quality_check
        self.min_fov_radius = min_fov_radius
        self.max_surround_brightness = max_surround_brightness
        self.min_fov_coverage = min_fov_coverage
        self.min_focus = min_focus
        self.max_overexposed_fraction = max_overexposed_fraction
        self.max_underexposed_fraction = max_underexposed_fraction
        self._standardise()

    def _standardise(self) -> None:
        """Bring the settings to their canonical types (square `size` dict, 3-value statistics) and check the type
        and range of every one (a JSON file is untrusted input); run on construction and on every per-call
        override."""
        if isinstance(self.size, int) and not isinstance(self.size, bool):
            self.size = {"height": self.size, "width": self.size}
        if not isinstance(self.size, dict) or sorted(self.size) != ["height", "width"]:
            raise InvalidArtefactError(
                f"size must be an integer or {{height, width}}, got {self.size!r}.", field="size"
            )
        for side in ("height", "width"):
            check_number(f"size.{side}", self.size[side], integer=True, low=8, high=self.MAX_OUTPUT_SIZE)
        if self.size["height"] != self.size["width"]:
            raise InvalidArtefactError(
                f"RetinaScan expects a square output size (height == width), got {self.size!r}.", field="size"
            )
        self.size = {"height": int(self.size["height"]), "width": int(self.size["width"])}
        for name in ("do_crop_fundus", "do_convert_rgb", "do_rescale", "do_normalize", "do_quality_check"):
            check_flag(name, getattr(self, name))
        self.resample = int(check_choice("resample", self.resample, [int(member) for member in Image.Resampling]))
        self.image_mean = _per_channel(self.image_mean, "image_mean")
        self.image_std = _per_channel(self.image_std, "image_std", low=0, low_open=True)
        check_number("rescale_factor", self.rescale_factor, low=0, low_open=True)
        unit_interval = {
            "fundus_threshold": {"high_open": True},
            "min_fundus_fraction": {"low_open": True},
            "min_fundus_contrast": {"high_open": True},
            "min_fov_radius": {},
            "min_fov_coverage": {},
            "max_overexposed_fraction": {},
            "max_underexposed_fraction": {},
        }
        for name, openness in unit_interval.items():
            check_number(name, getattr(self, name), low=0, high=1, **openness)
        check_number("max_surround_brightness", self.max_surround_brightness, low=0)
        check_number("min_focus", self.min_focus, low=0)
        for name in ("max_image_pixels", "max_decoded_pixels", "max_download_bytes"):
            check_number(name, getattr(self, name), integer=True, low=1)
        check_number("min_image_size", self.min_image_size, integer=True, low=1, high=self.MAX_OUTPUT_SIZE)
        check_number("download_timeout", self.download_timeout, low=0, low_open=True)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args, **kwargs):
        """transformers' loader; an invalid value is reported with the path of the file it came from."""
        try:
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except InvalidArtefactError as error:
            location = os.path.join(os.fspath(pretrained_model_name_or_path), kwargs.get("subfolder") or "")
            raise error.in_file(os.path.join(location, IMAGE_PROCESSOR_NAME)) from error

    def _with_overrides(self, **overrides: Any) -> RetinaScanImageProcessor:
        """A copy of this processor with one call's overrides applied (this instance is left as it is); `None`
        keeps the processor's own setting, as in transformers' image processors."""
        overrides = {name: value for name, value in overrides.items() if value is not None}
        if not overrides:
            return self
        processor = copy.copy(self)
        for name, value in overrides.items():
            setattr(processor, name, value)
        processor._standardise()
        return processor

    @property
    def output_size(self) -> int:
        return self.size["height"]

    @property
    def reduce_to(self) -> int:
        """The shorter side decoded images keep at least: twice the output size, and never below the quality
        check's analysis size, so its measurements do not depend on the output size."""
        return max(self.output_size * self.DECODE_OVERSAMPLING, FOCUS_ANALYSIS_SIZE)

    def load(
        self, source: FundusInput, timeout: float | None = None, input_data_format: str | None = None
    ) -> Image.Image:
        """Decode one input with this processor's safety limits and RGB conversion, reduced towards
        [`reduce_to`] (see [`load_fundus_image`])."""
        return load_fundus_image(
            source,
            reduce_to=self.reduce_to,
            max_image_pixels=self.max_image_pixels,
            max_decoded_pixels=self.max_decoded_pixels,
            min_image_size=self.min_image_size,
            timeout=self.download_timeout if timeout is None else timeout,
            max_download_bytes=self.max_download_bytes,
            do_convert_rgb=self.do_convert_rgb,
            input_data_format=input_data_format,
        )

    def fundus_box(self, image: Image.Image, name: str = "<image>") -> tuple[int, int, int, int]:
        """The fundus disc's bounding box; raise [`NoFundusFoundError`] naming the input."""
        try:
            return find_fundus_box(
                image,
                threshold=self.fundus_threshold,
                min_fundus_fraction=self.min_fundus_fraction,
                min_contrast=self.min_fundus_contrast,
            )
        except NoFundusFoundError as error:
            raise NoFundusFoundError(f"No visible fundus in {name}: {error}.") from error

    def crop_fundus(self, image: Image.Image, name: str = "<image>") -> Image.Image:
        """Crop to the fundus disc and pad to a square; raise [`NoFundusFoundError`] naming the input."""
        return pad_to_square(image.crop(self.fundus_box(image, name)))

    def _model_picture(self, image: Image.Image, name: str) -> Image.Image:
        """The fundus box (or the whole frame) resized onto the output square in one pass (see
        [`resize_into_square`])."""
        box = self.fundus_box(image, name) if self.do_crop_fundus else (0, 0, *image.size)
        return resize_into_square(image, box, self.output_size, self.resample, self.RESIZE_REDUCING_GAP)

    def to_model_image(
        self, source: FundusInput, timeout: float | None = None, input_data_format: str | None = None
    ) -> Image.Image:
        """The exact RGB picture the model sees (before normalisation); also used for overlays."""
        image = self.load(source, timeout=timeout, input_data_format=input_data_format)
        return self._model_picture(image, describe_input(source))

    def quality_problems(self, quality: FundusQuality) -> list[str]:
        """Why a picture with these measurements should not be graded, judged by this processor's thresholds."""
        if not quality.field_of_view_found or quality.field_of_view_radius < self.min_fov_radius:
            return ["no round fundus field of view found"]
        checks = (
            (
                quality.surround_brightness > self.max_surround_brightness,
                f"no dark surround around the field of view (surround/inside brightness "
                f"{quality.surround_brightness:.2f} > {self.max_surround_brightness})",
            ),
            (
                quality.field_of_view_coverage < self.min_fov_coverage,
                f"the field of view is mostly dark ({quality.field_of_view_coverage:.0%} bright < "
                f"{self.min_fov_coverage:.0%})",
            ),
            (
                quality.focus < self.min_focus,
                f"out of focus or featureless (focus {quality.focus:.4f} < {self.min_focus})",
            ),
            (
                quality.overexposed_fraction > self.max_overexposed_fraction,
                f"over-exposed ({quality.overexposed_fraction:.0%} of the field of view near white)",
            ),
            (
                quality.underexposed_fraction > self.max_underexposed_fraction,
                f"under-exposed ({quality.underexposed_fraction:.0%} of the field of view near black)",
            ),
        )
        return [problem for failed, problem in checks if failed]

    def prepare(
        self, source: FundusInput, timeout: float | None = None, input_data_format: str | None = None
    ) -> PreparedFundus:
        """Decode one input into the model's picture and judge its gradability (field of view, focus, exposure).

        Raises like [`to_model_image`] for inputs that are not usable images; a usable image that fails a
        quality threshold is returned with its `problems`, for the caller to flag rather than grade.
        """
        image = self.load(source, timeout=timeout, input_data_format=input_data_format)
        picture = self._model_picture(image, describe_input(source))
        if not self.do_quality_check:
            return PreparedFundus(picture, None, [])
        quality = assess_fundus_quality(image, threshold=self.fundus_threshold)
        return PreparedFundus(picture, quality, self.quality_problems(quality))

    def normalize_image(self, image: Image.Image) -> np.ndarray:
        """RGB PIL image -> float32 CHW array, rescaled to [0, 1] and CLIP-normalised.

        Each channel is computed in place straight into the CHW output from the uint8 pixels, with the float32
        operations of `(x * rescale_factor - mean) / std` in that order, so the values are bit for bit those of
        the plain array expression, at a third of its time (no float copy of the HWC image, no transposing copy):
        this runs on every image graded.
        """
        pixels = np.asarray(image)
        mean, std = np.asarray(self.image_mean, np.float32), np.asarray(self.image_std, np.float32)
        array = np.empty((3, *pixels.shape[:2]), np.float32)
        for channel, plane in enumerate(array):
            if self.do_rescale:
                np.multiply(pixels[..., channel], np.float32(self.rescale_factor), out=plane)
            else:
                plane[...] = pixels[..., channel]
            if self.do_normalize:
                plane -= mean[channel]
                plane /= std[channel]
        return array

    def preprocess(self, images: FundusInput | Sequence[FundusInput], **kwargs: Any) -> BatchFeature:
        """Process one input, a list of inputs, or a 4-D array/tensor batch into `pixel_values` `[B, 3, size, size]`.

        Keyword arguments override this processor's settings for this call (see
        [`RetinaScanImageProcessorKwargs`]); `return_tensors` defaults to `"pt"`, `data_format` to
        `"channels_first"`. Unknown arguments raise `TypeError`, as in transformers' image processors. Any bad input
        raises; the pipeline, which must not lose a batch to one bad item, calls [`prepare`] per item instead.
        """
        unknown = sorted(set(kwargs) - set(self.valid_kwargs.__annotations__))
        if unknown:
            raise TypeError(
                f"Unexpected arguments for RetinaScanImageProcessor: {unknown}; "
                f"supported: {sorted(self.valid_kwargs.__annotations__)}."
            )
        return_tensors = kwargs.pop("return_tensors", "pt")
        call = {name: kwargs.pop(name, None) for name in _CALL_ONLY_OPTIONS}
        processor = self._with_overrides(**kwargs)
        batch = _as_batch(images)
        if not batch:
            raise InvalidImageError("Received an empty list of images.")
        arrays = [
            processor.normalize_image(
                processor.to_model_image(item, timeout=call["timeout"], input_data_format=call["input_data_format"])
            )
            for item in batch
        ]
        pixel_values = np.stack(arrays)
        if call["data_format"] is not None and ChannelDimension(call["data_format"]) == ChannelDimension.LAST:
            pixel_values = np.ascontiguousarray(pixel_values.transpose(0, 2, 3, 1))
        return BatchFeature(data={"pixel_values": pixel_values}, tensor_type=return_tensors)

    def __call__(self, images, **kwargs) -> BatchFeature:
        return self.preprocess(images, **kwargs)

    @classmethod
    def for_backbone(cls, backbone_config, **kwargs) -> RetinaScanImageProcessor:
        """A processor whose output size matches a CLIP config's `vision_config.image_size`."""
        return cls(size=backbone_config.vision_config.image_size, **kwargs)


__all__ = [
    "DOWNLOAD_SCHEMES",
    "FundusQuality",
    "ImageDownloadError",
    "ImageTooLargeError",
    "InvalidImageError",
    "NoFundusFoundError",
    "PreparedFundus",
    "RetinaScanImageProcessor",
    "RetinaScanImageProcessorKwargs",
    "RetinaScanInputError",
    "assess_fundus_quality",
    "find_fundus_box",
    "load_fundus_image",
    "reduction_factor",
    "resize_into_square",
]
