"""Reading the files a corpus build is pointed at: regular files only, never more than a stated size.

A label file or image path comes from a data set someone else published (or typed). Opening a FIFO blocks
forever, `/dev/zero` never ends, and a multi-gigabyte file would be read whole into memory. Every read
therefore opens the path without blocking, checks on the open descriptor (not the path, which could be
swapped meanwhile) that it is a regular file, and reads at most the cap.
"""

from __future__ import annotations

import os
import stat

MAX_IMAGE_BYTES = 64 * 1024 * 1024
"""Largest image file a build reads (64 MiB). Fundus camera originals are 1-15 MB; an uncompressed 24 MP
TIFF is 72 MB and is excluded as `file_too_large`."""

MAX_LABEL_FILE_BYTES = 256 * 1024 * 1024
"""Largest label file (CSV or listing) a build reads (256 MiB, some 5 million rows)."""

_KINDS = {
    stat.S_ISDIR: "a folder",
    stat.S_ISFIFO: "a FIFO (named pipe)",
    stat.S_ISCHR: "a character device",
    stat.S_ISBLK: "a block device",
    stat.S_ISSOCK: "a socket",
}


class NotRegularFileError(OSError):
    """The path exists but is a folder, FIFO, device or socket: reading it could block or never end."""


class FileTooLargeError(OSError):
    """The file is larger than the cap for its role."""


def read_regular_file(path: str | os.PathLike, max_bytes: int) -> bytes:
    """The bytes of the regular file at `path` (symlinks followed), refusing anything else or anything larger.

    Raises:
        FileNotFoundError: nothing at `path`.
        NotRegularFileError: a folder, FIFO, device or socket (opened without blocking, never read).
        FileTooLargeError: more than `max_bytes`, whether its size says so or it grows while being read.
        OSError: any other failure to open or read (no permission...).
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    descriptor = os.open(path, flags)
    try:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _KINDS.items() if test(mode)), "not a regular file")
            raise NotRegularFileError(f"{path} is {kind}, not a regular file.")
        if os.fstat(descriptor).st_size > max_bytes:
            raise FileTooLargeError(f"{path} is larger than the {max_bytes}-byte limit.")
        chunks, total = [], 0
        while chunk := os.read(descriptor, min(1 << 20, max_bytes + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise FileTooLargeError(f"{path} grew past the {max_bytes}-byte limit while being read.")
        return b"".join(chunks)
    finally:
        os.close(descriptor)


__all__ = ["MAX_IMAGE_BYTES", "MAX_LABEL_FILE_BYTES", "FileTooLargeError", "NotRegularFileError", "read_regular_file"]
