"""Per-file checks: does the image exist, decode to its last byte, and what is its content hash.

Each file is read once, and only if it is a regular file of at most `MAX_IMAGE_BYTES` (a row pointing at
a FIFO or `/dev/zero` must not hang or exhaust memory): the bytes are hashed (for cross-source duplicate
detection) and decoded from memory. JPEGs decode in draft mode (DCT scaling to about 1/8 size), which still consumes
every entropy-coded byte, so truncation is caught at a fraction of a full decode's cost;
``Image.verify()`` alone would miss it.
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from .files import MAX_IMAGE_BYTES, FileTooLargeError, NotRegularFileError, read_regular_file
from .schema import Exclusion

_DRAFT_SIZE = (64, 64)


@dataclass(frozen=True)
class ImageCheck:
    """Outcome of checking one file: the reason it is unusable, or its sha256 when it decodes."""

    issue: Exclusion | None
    sha256: str = ""


def check_image(path: str) -> ImageCheck:
    """Check one image file; never raises, so one bad file cannot stop a build."""
    try:
        data = read_regular_file(path, MAX_IMAGE_BYTES)
    except FileNotFoundError:
        return ImageCheck(Exclusion.MISSING_FILE)
    except NotRegularFileError:
        return ImageCheck(Exclusion.NOT_A_REGULAR_FILE)
    except FileTooLargeError:
        return ImageCheck(Exclusion.FILE_TOO_LARGE)
    except (OSError, ValueError):  # no permission, a name too long, an embedded NUL...
        return ImageCheck(Exclusion.UNREADABLE_FILE)
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format == "JPEG":
                image.draft("RGB", _DRAFT_SIZE)
            image.load()
    except Image.DecompressionBombError:  # more pixels than PIL's budget: decoding would exhaust memory
        return ImageCheck(Exclusion.FILE_TOO_LARGE)
    except UnidentifiedImageError:  # bytes of no image format PIL knows
        return ImageCheck(Exclusion.UNREADABLE_FILE)
    except Exception:  # an image whose data ends early or is corrupt; PIL raises many types
        return ImageCheck(Exclusion.TRUNCATED_FILE)
    return ImageCheck(None, hashlib.sha256(data).hexdigest())


def check_images(paths: Sequence[str], *, num_proc: int = 1, progress: bool = True) -> list[ImageCheck]:
    """Check ``paths`` in order, over ``num_proc`` worker processes when more than one."""
    with_progress = partial(tqdm, total=len(paths), desc="Checking images", unit="img", disable=not progress)
    if num_proc <= 1:
        return list(with_progress(map(check_image, paths)))
    chunksize = max(1, min(64, len(paths) // (num_proc * 8)))
    with multiprocessing.get_context().Pool(num_proc) as pool:
        return list(with_progress(pool.imap(check_image, paths, chunksize=chunksize)))
