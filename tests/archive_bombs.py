"""Hostile archives for the tests of bounded archive reads (`ir.archive` and its callers), built in well under a
second each, and a way to measure what reading one costs in memory.

- `long_header_bomb`: a `.tar.gz` of a few hundred KB whose first header is a pax extended header (or a GNU
  long name) of 200 MB, followed by a valid IR member: what made the server grow to 1.6 GB;
- `tar_bomb`: a `.tar.gz` of about 1 MB holding one member of 1 GiB of zeros (a gzip bomb);
- `zip_bomb`: a `.zip` of about 1 MB holding one entry of 1 GiB of zeros.

Repeated data is deflated once per MiB and the compressed MiB repeated: deflate only looks 32 KiB back, so each
repetition decodes to the same MiB. The gzip and zip checksums are those of the whole content, so the archives
are valid, not just large.

`peak_growth_mb` runs code in a child Python and reports how much its peak RSS grew while the code ran.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import tarfile
import textwrap
import zlib
from pathlib import Path

MIB = 2**20
HEADER_BOMB_BYTES = 200 * MIB
ZEROS_BOMB_BYTES = 2**30
PIPELINE_YAML = b"kind: ScoringPipeline\n"


def _fill(byte: bytes, count: int, crc: int = 0) -> tuple[bytes, int]:
    """Raw deflate of `count` copies of `byte` (fast, see the module docstring), and `crc` continued over them."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = byte * MIB
    full, rest = divmod(count, MIB)
    out: list[bytes] = []
    if full:
        out.append(compressor.compress(block) + compressor.flush(zlib.Z_SYNC_FLUSH))
    if full > 1:
        out.append((compressor.compress(block) + compressor.flush(zlib.Z_SYNC_FLUSH)) * (full - 1))
    for _ in range(full):
        crc = zlib.crc32(block, crc)
    tail = byte * rest
    out.append(compressor.compress(tail) + compressor.flush(zlib.Z_SYNC_FLUSH))
    crc = zlib.crc32(tail, crc)
    return b"".join(out), crc


def _gzip(parts: list[bytes | tuple[bytes, int]]) -> bytes:
    """A gzip stream of `parts`: bytes as they are, `(byte, count)` as that many copies of the byte."""
    body: list[bytes] = []
    crc = 0
    size = 0
    for part in parts:
        if isinstance(part, bytes):
            compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
            body.append(compressor.compress(part) + compressor.flush(zlib.Z_SYNC_FLUSH))
            crc = zlib.crc32(part, crc)
            size += len(part)
        else:
            byte, count = part
            deflated, crc = _fill(byte, count, crc)
            body.append(deflated)
            size += count
    body.append(b"\x03\x00")  # an empty final fixed-Huffman block ends the deflate stream
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    return header + b"".join(body) + struct.pack("<LL", crc, size & 0xFFFFFFFF)


def _padding(size: int) -> int:
    return -size % tarfile.BLOCKSIZE


def _member(name: str, data: bytes) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info.tobuf(format=tarfile.USTAR_FORMAT) + data + bytes(_padding(len(data)))


def long_header_bomb(kind: str = "pax", size: int = HEADER_BOMB_BYTES) -> bytes:
    """A `.tar.gz` whose first header is a pax `path` record (`kind="pax"`) or a GNU long name (`"gnu"`) of
    `size` bytes, describing `pipeline.yaml`, then the end of the archive."""
    if kind == "pax":
        body = len(" path=\n") + size
        length = body + len(str(body))
        while len(str(length)) + body != length:
            length = len(str(length)) + body
        info = tarfile.TarInfo("././@PaxHeader")
        info.type = tarfile.XHDTYPE
        info.size = length
        head = info.tobuf(format=tarfile.USTAR_FORMAT) + f"{length} path=".encode()
        tail = b"\n"
        total = length
    else:
        info = tarfile.TarInfo("././@LongLink")
        info.type = tarfile.GNUTYPE_LONGNAME
        info.size = size + 1
        head = info.tobuf(format=tarfile.GNU_FORMAT)
        tail = b"\x00"
        total = size + 1
    member = tarfile.TarInfo("pipeline.yaml")
    member.size = len(PIPELINE_YAML)
    rest = tail + bytes(_padding(total)) + _member("pipeline.yaml", PIPELINE_YAML) + bytes(2 * tarfile.BLOCKSIZE)
    return _gzip([head, (b"a", size), rest])


def tar_bomb(size: int = ZEROS_BOMB_BYTES, name: str = "zeros.bin") -> bytes:
    """A `.tar.gz` of one member `name` holding `size` zero bytes, then the end of the archive."""
    info = tarfile.TarInfo(name)
    info.size = size
    return _gzip([info.tobuf(format=tarfile.USTAR_FORMAT), (b"\x00", size + _padding(size) + 2 * tarfile.BLOCKSIZE)])


def zip_bomb(size: int = ZEROS_BOMB_BYTES, name: str = "zeros.bin") -> bytes:
    """A `.zip` of one deflated entry `name` holding `size` zero bytes."""
    data, crc = _fill(b"\x00", size)
    data += b"\x03\x00"
    encoded = name.encode()
    date = (1 << 5) | 1  # 1980-01-01
    local = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 8, 0, date, crc, len(data), size, len(encoded), 0)
    central = struct.pack(
        "<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 8, 0, date, crc, len(data), size, len(encoded), 0, 0, 0, 0,
        0o644 << 16, 0,
    )  # fmt: skip
    local += encoded
    central += encoded
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, len(central), len(local) + len(data), 0)
    return local + data + central + end


def peak_growth_mb(setup: str, action: str) -> tuple[str, float]:
    """Run `setup` then `action` in a child Python (the project on its path); `action` is the body of a function
    returning a message (what was refused). Returns that message and how much the child's peak RSS grew, in MB,
    from after `setup` to after `action`."""
    script = "\n".join(
        [
            "import json, resource, sys",
            textwrap.dedent(setup),
            "def attempt():",
            textwrap.indent(textwrap.dedent(action), "    "),
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss",
            "message = attempt()",
            "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss",
            "print(json.dumps({'message': message, 'growth_kb': after - before}))",
        ]
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return str(result["message"]), result["growth_kb"] / 1024
