"""A tar stream written and read in pieces, so neither side holds a whole member in memory.

`tar_member` and `tar_end` make the bytes of a plain tar (GNU format, which `tar` and every
archiver read). `TarParser` is fed bytes as they arrive (from decryption) and hands each
member's data on in pieces; it accepts only what `tar_member` writes: regular files with
short names, no links, no extended headers.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable

from backup.errors import Tampered, Truncated

BLOCK = 512
RECORD = 20 * BLOCK  # tar pads an archive to a whole record of 20 blocks


def tar_header(name: str, size: int, mtime: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.type = size, mtime, 0o600, tarfile.REGTYPE
    header = info.tobuf(format=tarfile.GNU_FORMAT)
    if len(header) != BLOCK:  # a long name would need an extra header block: never written
        raise ValueError(f"tar member name too long: {name}")
    return header


def padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


def tar_member(name: str, data: bytes, mtime: int) -> bytes:
    return tar_header(name, len(data), mtime) + data + padding(len(data))


def tar_end(written: int) -> bytes:
    """The end-of-archive marker (two zero blocks), padded to a whole record."""
    end = 2 * BLOCK
    return b"\0" * (end + (-(written + end) % RECORD))


class TarParser:
    """Push parser: `feed` bytes, get `on_start(name, size)`, `on_data(bytes)`, `on_end()`."""

    def __init__(self, *, on_start: Callable[[str, int], None], on_data: Callable[[bytes], None],
                 on_end: Callable[[], None]) -> None:
        self._on_start, self._on_data, self._on_end = on_start, on_data, on_end
        self._buffer = bytearray()
        self._left = 0       # data bytes of the current member still to come
        self._pad = 0        # padding bytes after it
        self._in_member = False
        self._zero_blocks = 0
        self.finished = False

    def feed(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            if self._in_member:
                if self._left:
                    take = view[:self._left]
                    self._left -= len(take)
                    view = view[len(take):]
                    self._on_data(bytes(take))
                    continue
                if self._pad:
                    take = view[:self._pad]
                    if any(take):
                        raise Tampered("the payload's tar padding is not zero")
                    self._pad -= len(take)
                    view = view[len(take):]
                    continue
                self._in_member = False
                self._on_end()
                continue
            need = BLOCK - len(self._buffer)
            self._buffer += view[:need]
            view = view[need:]
            if len(self._buffer) == BLOCK:
                block, self._buffer = bytes(self._buffer), bytearray()
                self._header(block)
        if self._in_member and not self._left and not self._pad:
            self._in_member = False
            self._on_end()

    def _header(self, block: bytes) -> None:
        if self.finished or not any(block):
            if any(block):
                raise Tampered("the payload has data after its end-of-archive marker")
            self._zero_blocks += 1
            if self._zero_blocks >= 2:
                self.finished = True
            return
        if self._zero_blocks:
            raise Tampered("the payload's tar has a member after an empty block")
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "strict")
        except tarfile.HeaderError:
            raise Tampered("the payload holds a damaged tar header") from None
        if info.type != tarfile.REGTYPE:
            raise Tampered(f"the payload holds an unexpected tar entry {info.name!r}")
        self._in_member, self._left, self._pad = True, info.size, -info.size % BLOCK
        self._on_start(info.name, info.size)

    def close(self) -> None:
        if self._in_member or self._buffer or not self.finished:
            raise Truncated("the payload ends inside its tar archive")
