"""payload.age: age( zstd( tar of keys.json and tables/<table>/<n>.jsonl ) ), streamed both ways.

Writing pulls: rows are serialised on demand into tar blocks, zstd compresses what pyrage's
`encrypt_io` asks for, and the ciphertext goes straight into the archive. Reading pushes:
pyrage's `decrypt_io` writes plaintext into a sink that decompresses it and feeds a tar parser,
which checks every member against the signed manifest as it passes. Memory stays bounded by
the chunk size (a table is split into members of at most `chunk_size` bytes), never by the
size of the database.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import pyrage
import zstandard
from pyrage import x25519
from sqlalchemy import Connection, Table

from backup.errors import BackupError, Tampered, Truncated, WrongIdentity
from backup.identity import Identities
from backup.manifest import Manifest, TableEntry
from backup.progress import NO_PROGRESS, Progress
from backup.rows import dump_rows
from backup.tarstream import TarParser, tar_end, tar_member

KEYS_MEMBER = "keys.json"
DEFAULT_CHUNK = 4 * 1024 * 1024
ZSTD_LEVEL = 3
_MAX_KEYS_BYTES = 1024 * 1024
_MAX_LINE = 16 * 1024 * 1024


def member_name(table: str, index: int) -> str:
    return f"tables/{table}/{index:06d}.jsonl"


class PayloadBuilder:
    """Makes the inner tar on demand, table by table, recording each table's count and hash."""

    def __init__(self, connection: Connection, tables: Iterable[Table], keys_json: bytes, *,
                 mtime: int, chunk_size: int = DEFAULT_CHUNK,
                 progress: Progress = NO_PROGRESS) -> None:
        self._connection = connection
        self._tables = list(tables)
        self._keys_json = keys_json
        self._mtime = mtime
        self._chunk_size = chunk_size
        self._progress = progress
        self.tables: list[TableEntry] = []
        self.keys_sha256 = hashlib.sha256(keys_json).hexdigest()

    def stream(self) -> Iterator[bytes]:
        written = 0
        block = tar_member(KEYS_MEMBER, self._keys_json, self._mtime)
        written += len(block)
        yield block
        for table in self._tables:
            digest, rows, members = hashlib.sha256(), 0, 0
            chunk: list[bytes] = []
            size = 0
            for line in dump_rows(self._connection, table):
                chunk.append(line)
                size += len(line)
                rows += 1
                if size >= self._chunk_size:
                    members += 1
                    block = self._member(table.name, members, chunk, digest)
                    written += len(block)
                    yield block
                    self._progress.advance(len(chunk))
                    chunk, size = [], 0
            if chunk or members == 0:  # every table has at least one (maybe empty) member
                members += 1
                block = self._member(table.name, members, chunk, digest)
                written += len(block)
                yield block
                self._progress.advance(len(chunk))
            self.tables.append(TableEntry(table.name, rows, digest.hexdigest(), members))
        yield tar_end(written)

    def _member(self, table: str, index: int, lines: list[bytes], digest: hashlib._Hash) -> bytes:
        data = b"".join(lines)
        digest.update(data)
        return tar_member(member_name(table, index), data, self._mtime)


class _IterReader(io.RawIOBase):
    """A readable file over an iterator of byte blocks; keeps the iterator's own exception."""

    def __init__(self, blocks: Iterator[bytes]) -> None:
        self._blocks = blocks
        self._pending = memoryview(b"")
        self.error: BaseException | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._pending:
            try:
                self._pending = memoryview(next(self._blocks))
            except StopIteration:
                return 0
            except BaseException as exc:
                self.error = exc
                raise
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count


def encrypt_stream(blocks: Iterator[bytes], sink: io.RawIOBase, recipients: list[str]) -> None:
    """zstd-compress and age-encrypt `blocks` into `sink`, streaming."""
    source = _IterReader(blocks)
    compressed = zstandard.ZstdCompressor(level=ZSTD_LEVEL).stream_reader(
        source)  # type: ignore[arg-type]  # any object with read() will do
    try:
        pyrage.encrypt_io(compressed, sink,
                          [x25519.Recipient.from_str(r) for r in recipients])
    except pyrage.EncryptError:
        if source.error is not None:
            raise source.error from None
        raise


@dataclass
class _Expected:
    name: str
    table: TableEntry | None  # None for keys.json
    last: bool                # the table's last member


class PayloadSink(io.RawIOBase):
    """Where decryption writes: decompress, parse the tar, check each member as it passes."""

    def __init__(self, manifest: Manifest, *, on_keys: Callable[[bytes], None],
                 on_lines: Callable[[str, list[bytes]], None] | None) -> None:
        self._manifest = manifest
        self._on_keys, self._on_lines = on_keys, on_lines
        self._decompressor = zstandard.ZstdDecompressor().decompressobj()
        self._parser = TarParser(on_start=self._start, on_data=self._data, on_end=self._end)
        self._expected = [_Expected(KEYS_MEMBER, None, True)] + [
            _Expected(member_name(t.name, i), t, i == t.members)
            for t in manifest.tables for i in range(1, t.members + 1)]
        self._index = -1
        self._keys = bytearray()
        self._digest = hashlib.sha256()
        self._rows = 0
        self._partial = b""

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        if self._decompressor.eof:
            raise Tampered("payload.age holds data after its compressed stream")
        try:
            plain = self._decompressor.decompress(bytes(data))
        except zstandard.ZstdError:
            raise Tampered("the decrypted payload is not a valid zstd stream") from None
        if self._decompressor.eof and self._decompressor.unused_data:
            raise Tampered("payload.age holds data after its compressed stream")
        self._parser.feed(plain)
        return len(data)

    @property
    def _current(self) -> _Expected:
        return self._expected[self._index]

    def _start(self, name: str, size: int) -> None:
        self._index += 1
        if self._index >= len(self._expected):
            raise Tampered(f"the payload holds {name!r}, which the manifest does not list")
        if name != self._current.name:
            raise Tampered(f"the payload holds {name!r} where the manifest says "
                           f"{self._current.name!r}")
        if self._current.table is None and size > _MAX_KEYS_BYTES:
            raise Tampered("keys.json is implausibly large")

    def _data(self, data: bytes) -> None:
        if self._current.table is None:
            self._keys += data
            return
        self._digest.update(data)
        self._rows += data.count(b"\n")
        if self._on_lines is None:
            return
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > _MAX_LINE:
            raise Tampered(f"a row of {self._current.table.name} is implausibly long")
        if lines:
            self._on_lines(self._current.table.name, lines)

    def _end(self) -> None:
        expected = self._current
        if expected.table is None:
            keys = bytes(self._keys)
            if hashlib.sha256(keys).hexdigest() != self._manifest.keys["sha256"]:
                raise Tampered("keys.json does not match the manifest's hash")
            self._on_keys(keys)
            return
        if self._partial:
            raise Tampered(f"a member of {expected.table.name} ends inside a row")
        if not expected.last:
            return
        table = expected.table
        if self._rows != table.rows:
            raise Tampered(f"table {table.name} holds {self._rows} rows, the manifest says "
                           f"{table.rows}")
        if self._digest.hexdigest() != table.sha256:
            raise Tampered(f"table {table.name} does not match the manifest's hash")
        self._digest, self._rows = hashlib.sha256(), 0

    def close_stream(self) -> None:
        if not self._decompressor.eof:
            raise Truncated("the decrypted payload ends inside its compressed stream")
        self._parser.close()
        if self._index != len(self._expected) - 1:
            missing = self._expected[self._index + 1].name
            raise Tampered(f"the payload lacks {missing!r}, which the manifest lists")


def decrypt_stream(source: io.RawIOBase, manifest: Manifest, identities: Identities, *,
                   on_keys: Callable[[bytes], None],
                   on_lines: Callable[[str, list[bytes]], None] | None = None) -> None:
    """Decrypt, decompress and check the payload against the manifest, calling back with
    keys.json and (if asked) each table's lines; raises a `BackupError` on any mismatch."""
    if not identities.recipients & set(manifest.recipients):
        raise WrongIdentity(f"{identities.path} holds no key this backup was encrypted to "
                            f"(it was encrypted to {', '.join(manifest.recipients)})")
    sink = PayloadSink(manifest, on_keys=on_keys, on_lines=on_lines)
    try:
        pyrage.decrypt_io(source, sink, list(identities.identities))
    except pyrage.DecryptError as exc:
        if "no matching keys" in str(exc).lower():
            raise WrongIdentity(f"{identities.path} does not open payload.age") from None
        raise Tampered(f"payload.age does not decrypt: {exc}") from None
    except OSError as exc:  # age's STREAM: a chunk failed authentication, or the end is missing
        if isinstance(exc, BackupError):
            raise
        raise Tampered("payload.age failed authentication while decrypting (altered or cut "
                       "short)") from None
    sink.close_stream()
