"""The backup file: one plain, uncompressed tar with exactly three members, in this order.

    payload.age     age( zstd( tar of keys.json and the tables' JSON lines ) )
    MANIFEST.json   what the payload holds, its size and SHA-256, and who made it
    MANIFEST.sig    Ed25519 signature over the exact bytes of MANIFEST.json

The payload comes first so it can be streamed straight into the file: its header is written
as a placeholder and filled in once its size is known. The reader is strict: anything else
(another member, another order, bytes after the end) is refused.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from backup.errors import BackupError, Tampered, Truncated
from backup.progress import NO_PROGRESS, Progress
from backup.tarstream import BLOCK, padding, tar_end, tar_header

PAYLOAD, MANIFEST, SIGNATURE = "payload.age", "MANIFEST.json", "MANIFEST.sig"
MEMBERS = (PAYLOAD, MANIFEST, SIGNATURE)
_MAX_SMALL_MEMBER = 4 * 1024 * 1024


class _PayloadSink(io.RawIOBase):
    """Writes the payload into the archive, hashing and counting it on the way."""

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self.sha256 = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self._handle.write(data)
        self.sha256.update(data)
        self.size += len(data)
        return len(data)


class ArchiveWriter:
    """Writes a backup file under a temporary name; `commit` renames it only when complete."""

    def __init__(self, final_path: Path, *, mtime: int) -> None:
        self.final_path = final_path
        self.partial_path = final_path.with_name(final_path.name + ".partial")
        self._mtime = mtime
        fd = os.open(self.partial_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._handle: BinaryIO = os.fdopen(fd, "wb")
        self._written = 0
        self._payload: _PayloadSink | None = None

    def payload(self) -> _PayloadSink:
        self._handle.write(b"\0" * BLOCK)  # the header, once the size is known
        self._payload = _PayloadSink(self._handle)
        return self._payload

    def end_payload(self) -> tuple[int, str]:
        sink = self._payload
        if sink is None:
            raise RuntimeError("no payload was started")
        self._handle.write(padding(sink.size))
        end = self._handle.tell()
        self._handle.seek(0)
        self._handle.write(tar_header(PAYLOAD, sink.size, self._mtime))
        self._handle.seek(end)
        self._written = end
        return sink.size, sink.sha256.hexdigest()

    def add(self, name: str, data: bytes) -> None:
        block = tar_header(name, len(data), self._mtime) + data + padding(len(data))
        self._handle.write(block)
        self._written += len(block)

    def commit(self) -> Path:
        self._handle.write(tar_end(self._written))
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        os.replace(self.partial_path, self.final_path)
        directory = os.open(self.final_path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        return self.final_path

    def abort(self) -> None:
        if not self._handle.closed:
            self._handle.close()
        self.partial_path.unlink(missing_ok=True)


@dataclass(frozen=True)
class Layout:
    """Where each member's data lies in the file, and the two small members themselves."""

    path: Path
    payload_offset: int
    payload_size: int
    manifest: bytes
    signature: bytes
    file_size: int


def _read_exact(handle: BinaryIO, size: int, what: str) -> bytes:
    data = handle.read(size)
    if len(data) != size:
        raise Truncated(f"the file ends inside {what}: it was cut short or never finished")
    return data


def _header(handle: BinaryIO, expected: str) -> int:
    block = _read_exact(handle, BLOCK, f"the header of {expected}")
    if not any(block):
        raise Truncated(f"the archive ends before {expected}")
    try:
        info = tarfile.TarInfo.frombuf(block, "utf-8", "strict")
    except tarfile.HeaderError:
        raise Tampered(f"the tar header of {expected} is damaged") from None
    if info.name != expected or info.type != tarfile.REGTYPE:
        raise Tampered(f"expected {expected} in the archive, found {info.name!r}")
    return int(info.size)


def read_layout(path: Path) -> Layout:
    """Check the file's structure (without reading the payload) and locate its members."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise BackupError(f"no such file: {path}") from None
    with handle:
        file_size = os.fstat(handle.fileno()).st_size
        if file_size < BLOCK:
            raise Truncated(f"{path.name} is {file_size} bytes: not a whole backup")
        try:
            payload_size = _header(handle, PAYLOAD)
        except Tampered:
            raise Tampered(f"{path.name} is not an Enclave backup (or its start was altered)") \
                from None
        payload_offset = handle.tell()
        skip = payload_size + (-payload_size % BLOCK)
        if payload_offset + skip > file_size:
            raise Truncated(f"{path.name} ends inside payload.age: it was cut short or never "
                            "finished")
        handle.seek(payload_size, os.SEEK_CUR)
        # Every byte of the file is checked: the payload by its signed hash, the padding here.
        if any(_read_exact(handle, skip - payload_size, PAYLOAD)):
            raise Tampered(f"the tar padding after {PAYLOAD} is not zero")
        small: dict[str, bytes] = {}
        for name in (MANIFEST, SIGNATURE):
            size = _header(handle, name)
            if size > _MAX_SMALL_MEMBER:
                raise Tampered(f"{name} is implausibly large ({size} bytes)")
            small[name] = _read_exact(handle, size, name)
            if any(_read_exact(handle, -size % BLOCK, name)):
                raise Tampered(f"the tar padding after {name} is not zero")
        written = handle.tell()
        end = tar_end(written)
        tail = handle.read(len(end) + 1)
        if len(tail) < len(end):
            raise Truncated(f"{path.name} ends before its end-of-archive marker: it was cut short")
        if tail != end:
            raise Tampered(f"{path.name} has bytes after its end-of-archive marker "
                           "(appended or altered)")
    return Layout(path, payload_offset, payload_size, small[MANIFEST], small[SIGNATURE],
                  file_size)


class PayloadReader(io.RawIOBase):
    """Reads exactly the payload's bytes out of the archive, hashing them as they pass."""

    def __init__(self, layout: Layout) -> None:
        self._handle = layout.path.open("rb")
        self._handle.seek(layout.payload_offset)
        self._left = layout.payload_size
        self.sha256 = hashlib.sha256()
        self.read_bytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer)[:self._left]
        count = self._handle.readinto(view)
        if count:
            self.sha256.update(view[:count])
            self._left -= count
            self.read_bytes += count
        return count or 0

    def close(self) -> None:
        self._handle.close()
        super().close()


#: Bytes read at a time when hashing the payload.
_READ_SIZE = 1024 * 1024


def payload_sha256(layout: Layout, progress: Progress = NO_PROGRESS) -> str:
    """The SHA-256 (hex) of the archive's payload.age, read through once."""
    reader = PayloadReader(layout)
    try:
        progress.start("checking payload.age", layout.payload_size)
        buffer = bytearray(_READ_SIZE)
        while count := reader.readinto(buffer):
            progress.advance(count)
        progress.finish()
    finally:
        reader.close()
    return reader.sha256.hexdigest()
