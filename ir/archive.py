"""Reading untrusted archives (tar, gzip-compressed tar, zip) within bounds set before anything is read.

A few hundred kilobytes of `.tar.gz` can decompress to gigabytes (a gzip bomb), hold a pax extended header of
hundreds of megabytes that `tarfile` reads into memory whole before a caller sees the member it describes, or
a zip whose central directory lists millions of entries. Every archive the project reads (deploy bundles in
`ir.load`, the artifact store's folder uploads in `scheduler.artifacts`, downloaded model archives in
`scoring_services.artifacts`) goes through this module, which refuses, with `ArchiveTooLarge` naming the limit:

- decompressed bytes beyond `ArchiveLimits.max_bytes`: the gzip stream is read through a decompressor that
  counts what it produces and stops past the limit (headers and padding count, so disk and memory are bounded
  whatever the members declare); a zip member is copied through a counter the same way;
- extended headers (pax, GNU long names and links) beyond `max_header_bytes` together, checked on their
  declared size before `tarfile` reads them; GNU sparse members are refused (their maps are unbounded lists);
- more members than `max_members`; for a zip, a central directory larger than `max_header_bytes` or with more
  entries than `max_members`, read from the end record before `zipfile` loads the directory.

Anything unreadable is an `ArchiveError` whose message is the reason (callers say what was being read);
`ArchiveTooLarge` messages are whole sentences. Neither depends on the caller: `ir` imports nothing of the project,
so the scheduler and the scoring services use this one implementation.
"""

from __future__ import annotations

import io
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Final

__all__ = [
    "MAX_HEADER_BYTES",
    "ArchiveError",
    "ArchiveLimits",
    "ArchiveTooLarge",
    "TarReader",
    "check_zip_directory",
    "extract_archive",
    "extract_zip",
    "format_bytes",
    "open_tar",
]

MAX_HEADER_BYTES: Final = 4 * 2**20
"""Extended headers of one tar archive together (a pax record per member is ~100 bytes), or a zip's directory."""
GZIP_MAGIC: Final = b"\x1f\x8b"
_CHUNK: Final = 1 << 16
_HEADER_TYPES: Final = {
    tarfile.XHDTYPE: "pax extended header",
    tarfile.XGLTYPE: "pax global header",
    tarfile.SOLARIS_XHDTYPE: "pax extended header",
    tarfile.GNUTYPE_LONGNAME: "GNU long name header",
    tarfile.GNUTYPE_LONGLINK: "GNU long link header",
}
_ZIP_END: Final = b"PK\x05\x06"
_ZIP64_LOCATOR: Final = b"PK\x06\x07"
_ZIP64_END: Final = b"PK\x06\x06"


class ArchiveError(ValueError):
    """The archive cannot be read, or holds something refused (a sparse file, an unsafe path)."""


class ArchiveTooLarge(ArchiveError):
    """The archive is past one of its limits; the message names it, `limit` is its value in `unit`s."""

    def __init__(self, message: str, limit: int, unit: str = "bytes") -> None:
        super().__init__(message)
        self.limit = limit
        self.unit = unit


def format_bytes(size: int) -> str:
    """`32 MiB`, `1.5 GiB`, `512 bytes`: how limits are named in messages."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            value = size / scale
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{size} bytes"


@dataclass(frozen=True)
class ArchiveLimits:
    """The bounds of one archive read. `name` says in messages whose limit `max_bytes` is (a setting's name,
    or e.g. "the bundle limit")."""

    max_bytes: int
    max_members: int
    name: str
    max_header_bytes: int = MAX_HEADER_BYTES

    def too_large(self) -> ArchiveTooLarge:
        return ArchiveTooLarge(
            f"the archive decompresses to more than {format_bytes(self.max_bytes)} ({self.name})", self.max_bytes
        )

    def too_many(self) -> ArchiveTooLarge:
        return ArchiveTooLarge(f"the archive holds more than {self.max_members:,} members", self.max_members, "members")


class _BoundedReader(io.RawIOBase):
    """The decompressed bytes of a (possibly gzip-compressed) stream, refused past `limits.max_bytes`.

    The gzip stream is inflated in steps of at most the size asked for, so memory stays a few chunks whatever
    the compression ratio. Concatenated gzip members are read on; bytes after the last one are ignored.
    """

    def __init__(self, raw: BinaryIO, limits: ArchiveLimits) -> None:
        super().__init__()
        self._raw = raw
        self._limits = limits
        head = raw.read(2)
        self._gzip = head == GZIP_MAGIC
        self._input = head
        self._inflate = zlib.decompressobj(wbits=31) if self._gzip else None
        self._done = False
        self.produced = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        data = self._next(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def _next(self, size: int) -> bytes:
        if self._done or size <= 0:
            return b""
        if self._inflate is None:
            data = self._input or self._raw.read(size)
            data, self._input = data[:size], data[size:]
        else:
            data = self._inflated(size)
        if not data:
            self._done = True
        self.produced += len(data)
        if self.produced > self._limits.max_bytes:
            raise self._limits.too_large()
        return data

    def _inflated(self, size: int) -> bytes:
        assert self._inflate is not None
        try:
            while True:
                if self._inflate.eof:
                    rest = self._inflate.unused_data or self._raw.read(_CHUNK)
                    if rest[:2] != GZIP_MAGIC:
                        return b""
                    self._inflate = zlib.decompressobj(wbits=31)
                    self._input = rest
                if not self._input:
                    self._input = self._raw.read(_CHUNK)
                    if not self._input:
                        raise ArchiveError("unexpected end of the gzip data (a truncated archive?)")
                data = self._inflate.decompress(self._input, size)
                self._input = self._inflate.unconsumed_tail
                if data:
                    return data
        except zlib.error as exc:
            raise ArchiveError(f"corrupt gzip data: {exc}") from None


class TarReader:
    """The members of an open tar archive, in order, within the limits (see `open_tar`)."""

    def __init__(self, archive: tarfile.TarFile, limits: ArchiveLimits) -> None:
        self.archive = archive
        self.limits = limits

    def __iter__(self) -> Iterator[tarfile.TarInfo]:
        declared = 0
        for count, member in enumerate(self.archive, start=1):
            if count > self.limits.max_members:
                raise self.limits.too_many()
            declared += member.size  # refused before its data is read, not only once it was
            if declared > self.limits.max_bytes:
                raise self.limits.too_large()
            yield member

    def read(self, member: tarfile.TarInfo) -> bytes:
        """The content of the member just yielded (callers check `member.size` first)."""
        handle = self.archive.extractfile(member)
        return handle.read() if handle is not None else b""

    def extract_all(self, target: Path, accept: Callable[[tarfile.TarInfo], None] | None = None) -> None:
        """Extract every member below `target` with tarfile's `data` filter (no links out, no devices, no
        absolute paths); `accept` may raise to refuse a member before it is written."""

        def accepted() -> Iterator[tarfile.TarInfo]:
            for member in self:
                if accept is not None:
                    accept(member)
                yield member

        self.archive.extractall(target, members=accepted(), filter="data")


@contextmanager
def open_tar(source: BinaryIO, limits: ArchiveLimits) -> Iterator[TarReader]:
    """Read a tar archive, plain or gzip-compressed (told by its first bytes), from `source` as a stream.

    Raises `ArchiveTooLarge` past a limit and `ArchiveError` for anything unreadable, also while the caller
    iterates and reads members inside the block.
    """
    used = [0]

    class BoundedTarInfo(tarfile.TarInfo):
        def _proc_member(self, archive: tarfile.TarFile) -> tarfile.TarInfo:
            kind = _HEADER_TYPES.get(self.type)
            if kind is not None:
                used[0] += self.size
                if used[0] > limits.max_header_bytes:
                    raise ArchiveTooLarge(
                        f"the archive has a {kind} of {self.size:,} bytes; extended headers are limited to "
                        f"{format_bytes(limits.max_header_bytes)} per archive",
                        limits.max_header_bytes,
                    )
            if self.type == tarfile.GNUTYPE_SPARSE:
                raise ArchiveError(f"the archive holds a sparse file ({self.name!r}); sparse files are refused")
            member: tarfile.TarInfo = super()._proc_member(archive)  # type: ignore[misc]
            if member.sparse is not None:
                raise ArchiveError(f"the archive holds a sparse file ({member.name!r}); sparse files are refused")
            return member

    try:
        reader = _BoundedReader(source, limits)
        with tarfile.open(fileobj=reader, mode="r|", tarinfo=BoundedTarInfo) as archive:
            yield TarReader(archive, limits)
    except ArchiveError:
        raise
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise ArchiveError(str(exc) or type(exc).__name__) from None


def _zip_directory(path: Path) -> tuple[int, int]:
    """The number of entries and the size of the central directory of the zip at `path`, from its end record
    (zip64 too), read before `zipfile` loads the directory."""
    with path.open("rb") as handle:
        end = handle.seek(0, io.SEEK_END)
        start = max(0, end - (22 + 0xFFFF + 20))
        handle.seek(start)
        tail = handle.read()
        at = tail.rfind(_ZIP_END)
        if at < 0 or len(tail) - at < 22:
            raise ArchiveError("not a zip archive (no end of central directory record)")
        _, _, _, _, entries, size, offset, _ = struct.unpack("<4s4H2LH", tail[at : at + 22])
        if entries == 0xFFFF or size == 0xFFFFFFFF or offset == 0xFFFFFFFF:
            locator = tail[at - 20 : at] if at >= 20 else b""
            if len(locator) == 20 and locator[:4] == _ZIP64_LOCATOR:
                _, _, record_at, _ = struct.unpack("<4sLQL", locator)
                handle.seek(record_at)
                record = handle.read(56)
                if len(record) == 56 and record[:4] == _ZIP64_END:
                    fields = struct.unpack("<4sQ2H2L4Q", record)
                    entries, size = fields[7], fields[8]
    return entries, size


def check_zip_directory(path: Path, limits: ArchiveLimits) -> None:
    """Refuse (`ArchiveTooLarge`) the zip at `path` when its central directory, which `zipfile.ZipFile` loads
    whole when it opens the archive, lists more than `max_members` entries or takes more than
    `max_header_bytes`; read from the end record, before `zipfile` sees the archive."""
    entries, directory = _zip_directory(path)
    if entries > limits.max_members:
        raise limits.too_many()
    if directory > limits.max_header_bytes:
        raise ArchiveTooLarge(
            f"the zip's central directory is {directory:,} bytes; the limit is {format_bytes(limits.max_header_bytes)}",
            limits.max_header_bytes,
        )


def extract_zip(path: Path, target: Path, limits: ArchiveLimits) -> None:
    """Extract the zip at `path` into the folder `target`, within `limits` (see the module docstring)."""
    check_zip_directory(path, limits)
    try:
        with zipfile.ZipFile(path) as zipped:
            infos = zipped.infolist()
            if len(infos) > limits.max_members:
                raise limits.too_many()
            if sum(info.file_size for info in infos) > limits.max_bytes:
                raise limits.too_large()
            written = 0
            for info in infos:
                member = PurePosixPath(info.filename)
                if member.is_absolute() or ".." in member.parts or "\\" in info.filename or ":" in info.filename:
                    raise ArchiveError(f"the archive has an unsafe member path {info.filename!r}")
                destination = target.joinpath(*member.parts)
                if info.is_dir():
                    destination.mkdir(parents=True, exist_ok=True)
                    continue
                destination.parent.mkdir(parents=True, exist_ok=True)
                with zipped.open(info) as source, destination.open("wb") as out:
                    while chunk := source.read(_CHUNK):
                        written += len(chunk)  # what the entries declare may be false: count what comes out
                        if written > limits.max_bytes:
                            raise limits.too_large()
                        out.write(chunk)
    except ArchiveError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, NotImplementedError) as exc:
        raise ArchiveError(str(exc) or type(exc).__name__) from None


def extract_archive(path: Path, target: Path, limits: ArchiveLimits) -> None:
    """Extract a `.zip` (by its name) or a tar, plain or gzip-compressed, into the folder `target`."""
    if path.name.endswith(".zip"):
        extract_zip(path, target, limits)
        return
    with path.open("rb") as handle, open_tar(handle, limits) as archive:
        archive.extract_all(target)
