"""Bounded archive reads (`ir.archive`, and `ir.load` through it): hostile `.tar.gz` and `.zip` archives are
refused naming the limit, before they are read, with the memory of the reading process staying flat."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

import ir
from ir.archive import ArchiveError, ArchiveLimits, ArchiveTooLarge, extract_archive, extract_zip, open_tar
from ir.load import MAX_BUNDLE_BYTES
from tests.archive_bombs import long_header_bomb, peak_growth_mb, tar_bomb, zip_bomb

MEMORY_BUDGET_MB = 50


def tar_gz(members: list[tuple[str, bytes]], *, gzip: bool = True, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gzip else "w", format=fmt) as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def limits(max_bytes: int = MAX_BUNDLE_BYTES, max_members: int = 1000, **more: int) -> ArchiveLimits:
    return ArchiveLimits(max_bytes, max_members, "the test limit", **more)


def read_all(data: bytes, bounds: ArchiveLimits) -> list[str]:
    """The names of the archive's members, every member's content read."""
    with open_tar(io.BytesIO(data), bounds) as archive:
        names = []
        for member in archive:
            archive.read(member)
            names.append(member.name)
        return names


def load_in_child(path: Path) -> tuple[str, float]:
    return peak_growth_mb(
        "import ir\nfrom pathlib import Path",
        f"""
        try:
            ir.load_bundle(Path({str(path)!r}))
        except ir.IRValidationError as exc:
            return str(exc)
        return "loaded"
        """,
    )


@pytest.mark.parametrize("kind", ["pax", "gnu"])
def test_a_bundle_with_a_200_mb_extended_header_is_refused_before_it_is_read_and_memory_stays_flat(
    tmp_path: Path, kind: str
) -> None:
    path = tmp_path / "bomb.tar.gz"
    path.write_bytes(long_header_bomb(kind))
    assert path.stat().st_size < 1024 * 1024
    message, growth = load_in_child(path)
    header = "pax extended header" if kind == "pax" else "GNU long name header"
    assert f"bomb.tar.gz: the archive has a {header} of " in message
    assert "extended headers are limited to 4 MiB per archive" in message
    assert growth < MEMORY_BUDGET_MB


def test_a_gzip_bomb_bundle_is_refused_naming_the_bundle_limit_and_memory_stays_flat(tmp_path: Path) -> None:
    path = tmp_path / "bomb.tar.gz"
    path.write_bytes(tar_bomb())
    message, growth = load_in_child(path)
    assert "bomb.tar.gz: the archive decompresses to more than 32 MiB (the bundle limit)" in message
    assert growth < MEMORY_BUDGET_MB


def test_a_zip_bomb_is_refused_naming_the_limit_and_memory_stays_flat(tmp_path: Path) -> None:
    path = tmp_path / "bomb.zip"
    path.write_bytes(zip_bomb())
    message, growth = peak_growth_mb(
        "from pathlib import Path\nfrom ir.archive import ArchiveLimits, ArchiveTooLarge, extract_zip",
        f"""
        target = Path({str(tmp_path / "out")!r})
        target.mkdir()
        try:
            extract_zip(Path({str(path)!r}), target, ArchiveLimits(64 * 2**20, 100, "the test limit"))
        except ArchiveTooLarge as exc:
            return str(exc)
        return "extracted"
        """,
    )
    assert message == "the archive decompresses to more than 64 MiB (the test limit)"
    assert growth < MEMORY_BUDGET_MB
    assert list((tmp_path / "out").iterdir()) == []


def test_what_a_tar_decompresses_to_is_counted_headers_included_not_only_what_members_declare() -> None:
    empty_files = tar_gz([(f"f{i}.txt", b"") for i in range(3000)])  # 3000 headers of 512 bytes, no data
    with pytest.raises(ArchiveTooLarge, match=r"^the archive decompresses to more than 1 MiB \(the test limit\)$"):
        read_all(empty_files, limits(2**20, 10_000))


def test_a_member_declaring_more_than_the_limit_is_refused_before_any_of_it_is_written(tmp_path: Path) -> None:
    path = tmp_path / "bomb.tar.gz"
    path.write_bytes(tar_bomb())
    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(ArchiveTooLarge, match=r"^the archive decompresses to more than 1 MiB \(the test limit\)$"):
        extract_archive(path, target, limits(2**20))
    assert list(target.iterdir()) == []


def test_more_members_than_the_limit_are_refused() -> None:
    data = tar_gz([(f"f{i}.txt", b"x") for i in range(11)])
    with pytest.raises(ArchiveTooLarge, match=r"^the archive holds more than 10 members$"):
        read_all(data, limits(max_members=10))


def test_extended_headers_are_bounded_together_not_only_one_by_one() -> None:
    long_names = [("d/" + "n" * 200 + f"{i}.txt", b"x") for i in range(20)]  # a pax header of ~230 bytes each
    with pytest.raises(ArchiveTooLarge, match=r"extended headers are limited to 2 KiB per archive$"):
        read_all(tar_gz(long_names), limits(max_header_bytes=2048))
    assert read_all(tar_gz(long_names[:5]), limits(max_header_bytes=2048)) == [name for name, _ in long_names[:5]]


def test_a_sparse_member_is_refused() -> None:
    info = tarfile.TarInfo("sparse.bin")
    info.type = tarfile.GNUTYPE_SPARSE
    data = info.tobuf(format=tarfile.GNU_FORMAT) + bytes(2 * tarfile.BLOCKSIZE)
    with pytest.raises(ArchiveError, match=r"sparse file \('sparse.bin'\); sparse files are refused"):
        read_all(data, limits())


@pytest.mark.parametrize("gzip", [True, False], ids=["gzip", "plain"])
def test_a_tar_plain_or_gzip_is_extracted_with_its_files(tmp_path: Path, gzip: bool) -> None:
    path = tmp_path / "model.tar"
    path.write_bytes(tar_gz([("model/a.txt", b"a"), ("model/sub/b.txt", b"bb")], gzip=gzip))
    extract_archive(path, tmp_path / "out", limits())
    assert (tmp_path / "out" / "model" / "sub" / "b.txt").read_bytes() == b"bb"


def test_a_truncated_or_corrupt_gzip_is_an_archive_error() -> None:
    data = tar_gz([("a.txt", b"a" * 100_000)])
    with pytest.raises(ArchiveError, match="unexpected end of the gzip data"):
        read_all(data[: len(data) // 2], limits())
    with pytest.raises(ArchiveError, match="corrupt gzip data"):
        read_all(data[:20] + b"\xff" * 200, limits())


def zip_of(names: list[str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        for name in names:
            zipped.writestr(name, b"x")
    return buffer.getvalue()


def test_a_zip_listing_more_entries_than_the_limit_is_refused_from_its_end_record(tmp_path: Path) -> None:
    path = tmp_path / "many.zip"
    path.write_bytes(zip_of([f"f{i}" for i in range(11)]))
    with pytest.raises(ArchiveTooLarge, match=r"^the archive holds more than 10 members$"):
        extract_zip(path, tmp_path, limits(max_members=10))
    with pytest.raises(ArchiveTooLarge, match=r"^the zip's central directory is \d+ bytes; the limit is 100 bytes$"):
        extract_zip(path, tmp_path, limits(max_header_bytes=100))


@pytest.mark.parametrize("name", ["../evil.txt", "/abs.txt", "a/../../evil.txt", "c:evil.txt"])
def test_a_zip_member_escaping_the_target_is_refused(tmp_path: Path, name: str) -> None:
    path = tmp_path / "evil.zip"
    path.write_bytes(zip_of(["ok.txt", name]))
    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(ArchiveError, match="unsafe member path"):
        extract_zip(path, target, limits())
    assert not (tmp_path / "evil.txt").exists()


def test_a_zip_is_extracted_with_its_folders(tmp_path: Path) -> None:
    path = tmp_path / "model.zip"
    path.write_bytes(zip_of(["model/a.txt", "model/sub/b.txt"]))
    extract_archive(path, tmp_path / "out", limits())
    assert (tmp_path / "out" / "model" / "sub" / "b.txt").read_bytes() == b"x"


def test_a_bundle_archive_within_the_limits_still_loads(tmp_path: Path) -> None:
    from bundle_kit import fresh

    files = fresh().files()
    bundle = ir.load_bundle_tarball(tar_gz([(name, text.encode()) for name, text in files.items()]))
    assert bundle.name
