"""Garbage input: every kind of unreadable bundle is one clear `Issue`, never another exception.

Bundles arrive over REST, so the loader must turn anything (binary, bombs, archives with tricks) into an
`IRValidationError` quickly and without exhausting memory.
"""

from __future__ import annotations

import io
import os
import random
import tarfile
import time
from pathlib import Path

import pytest
from bundle_kit import BundleData, fresh

import ir

# "billion laughs": 9 levels of 9 aliases each, 9**9 (387 million) leaves once expanded
ALIAS_BOMB = "a0: &a0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"a{level}: &a{level} [{', '.join([f'*a{level - 1}'] * 9)}]\n" for level in range(1, 9)
)


def single_issue(files: dict[str, str | bytes]) -> ir.Issue:
    with pytest.raises(ir.IRValidationError) as caught:
        ir.load_bundle_files(files)
    issues = caught.value.issues
    assert len(issues) == 1, "\n".join(map(str, issues))
    return issues[0]


def path_issues(path: Path) -> list[ir.Issue]:
    with pytest.raises(ir.IRValidationError) as caught:
        ir.load_bundle(path)
    return caught.value.issues


GARBAGE: list[tuple[str, dict[str, str | bytes], tuple[str, str, str], str]] = [
    ("empty-file", {"a.yaml": b""}, ("a.yaml", "", ""), "the file is empty"),
    ("whitespace-only", {"a.yaml": " \n\t\n  \n"}, ("a.yaml", "", ""), "the file is empty"),
    ("comments-only", {"a.yaml": "# a comment\n# another\n"}, ("a.yaml", "", ""), "the file holds no documents"),
    ("separators-only", {"a.yaml": "---\n---\n"}, ("a.yaml", "", ""), "the file holds no documents"),
    ("nul-bytes", {"a.yaml": b"kind: Model\x00\x00\x01"}, ("a.yaml", "", ""), "binary content"),
    ("nul-in-text", {"a.yaml": "kind: Model\x00"}, ("a.yaml", "", ""), "binary content"),
    (
        "random-bytes-not-utf8",
        {"a.yaml": bytes(range(0x80, 0x100)) * 4},
        ("a.yaml", "", ""),
        "not UTF-8 text (invalid byte at offset 0)",
    ),
    (
        "utf8-then-invalid-byte",
        {"m.json": b'{"kind": "Model"}\xff'},
        ("m.json", "", ""),
        "not UTF-8 text (invalid byte at offset 17)",
    ),
    (
        "yaml-syntax-error",
        {"a.yaml": "apiVersion: modelops/v1\nkind: Model\nmetadata: {name: [m\n"},
        ("a.yaml", "document 1", ""),
        "YAML syntax error",
    ),
    ("yaml-bad-indentation", {"a.yaml": "a:\n  b: 1\n c: 2\n"}, ("a.yaml", "document 1", ""), "YAML syntax error"),
    (
        "json-syntax-error",
        {"a.json": '{"kind": "Model",\n "x": }'},
        ("a.json", "", ""),
        "invalid JSON: Expecting value",
    ),
    ("alias-bomb", {"bomb.yaml": ALIAS_BOMB}, ("bomb.yaml", "document 1", ""), "through YAML aliases (an alias bomb?)"),
    ("recursive-anchor-list", {"a.yaml": "a: &a [1, *a]\n"}, ("a.yaml", "document 1", ""), "nesting is too deep"),
    ("recursive-anchor-map", {"a.yaml": "a: &a {b: *a}\n"}, ("a.yaml", "document 1", ""), "nesting is too deep"),
    (
        "undefined-alias",
        {"a.yaml": "a: *nowhere\n"},
        ("a.yaml", "document 1", ""),
        "YAML syntax error: found undefined alias",
    ),
    (
        "yaml-deep-nesting-closed",
        {"a.yaml": "[" * 10_000 + "]" * 10_000},
        ("a.yaml", "document 1", ""),
        "nesting is too deep (more than 64 levels)",
    ),
    ("yaml-deep-nesting-unclosed", {"a.yaml": "[" * 10_000}, ("a.yaml", "document 1", ""), "nesting is too deep"),
    (
        "json-deep-nesting-closed",
        {"a.json": "[" * 10_000 + "]" * 10_000},
        ("a.json", "", ""),
        "nesting is too deep (more than 64 levels)",
    ),
    ("json-deep-nesting-unclosed", {"a.json": "[" * 10_000}, ("a.json", "", ""), "nesting is too deep"),
    (
        "json-deep-objects",
        {"a.json": '{"a":' * 100_000 + "1" + "}" * 100_000},
        ("a.json", "", ""),
        "nesting is too deep",
    ),
    (
        "document-is-a-list",
        {"a.yaml": "- apiVersion: modelops/v1\n- kind: Model\n"},
        ("a.yaml", "document 1", ""),
        "a document must be a mapping with apiVersion, kind, metadata and spec",
    ),
    (
        "document-is-a-scalar",
        {"a.yaml": "just some text\n"},
        ("a.yaml", "document 1", ""),
        "a document must be a mapping with apiVersion, kind, metadata and spec",
    ),
    (
        "json-document-is-a-number",
        {"a.json": "42"},
        ("a.json", "document 1", ""),
        "a document must be a mapping",
    ),
    (
        "duplicate-mapping-keys",
        {"a.yaml": "apiVersion: modelops/v1\nkind: Model\nkind: DataChannel\n"},
        ("a.yaml", "document 1", ""),
        "duplicate key 'kind'",
    ),
    (
        "python-object-tag",
        {"a.yaml": "!!python/object/apply:os.system [echo pwned]\n"},
        ("a.yaml", "document 1", ""),
        "could not determine a constructor for the tag",
    ),
    (
        "unhashable-key",
        {"a.yaml": "? [a, b]\n: c\n"},
        ("a.yaml", "document 1", ""),
        "found unhashable key",
    ),
    (
        "yaml-integer-with-5000-digits",
        {"a.yaml": "replicas: 1" + "0" * 5000 + "\n"},
        ("a.yaml", "document 1", ""),
        "invalid value: Exceeds the limit (4300 digits) for integer string conversion",
    ),
    (
        "json-integer-with-5000-digits",
        {"a.json": '{"replicas": 1' + "0" * 5000 + "}"},
        ("a.json", "", ""),
        "invalid JSON: Exceeds the limit (4300 digits) for integer string conversion",
    ),
    ("yaml-impossible-date", {"a.yaml": "day: 2024-13-01\n"}, ("a.yaml", "document 1", ""), "month must be in 1..12"),
    ("no-files-at-all", {}, ("<bundle>", "", ""), "the bundle is empty: no IR files"),
]


@pytest.mark.parametrize(("files", "where", "message"), [g[1:] for g in GARBAGE], ids=[g[0] for g in GARBAGE])
def test_garbage_is_one_clear_issue(files: dict[str, str | bytes], where: tuple[str, str, str], message: str) -> None:
    issue = single_issue(files)
    assert (issue.file, issue.document, issue.path) == where, str(issue)
    assert message in issue.message, str(issue)


@pytest.mark.parametrize("seed", range(5))
def test_random_bytes_are_one_issue_about_the_encoding(seed: int) -> None:
    data = random.Random(seed).randbytes(4096)
    issue = single_issue({"noise.yaml": data})
    assert issue.file == "noise.yaml"
    assert issue.message.startswith(("not UTF-8 text (invalid byte at offset", "binary content"))


def test_a_yaml_syntax_error_names_its_line() -> None:
    text = "apiVersion: modelops/v1\nkind: Model\nmetadata:\n  name: m\n  labels: {a: b\nspec: {}\n"
    issue = single_issue({"m.yaml": text})
    assert issue.line == 6
    assert str(issue).endswith("(line 6)")


def test_a_json_syntax_error_names_its_line() -> None:
    issue = single_issue({"m.json": '{\n  "kind": "Model",\n  "spec": {,}\n}'})
    assert issue.line == 3


def test_a_duplicate_key_names_the_line_of_the_second_key() -> None:
    issue = single_issue({"a.yaml": "apiVersion: modelops/v1\nkind: Model\nmetadata: {}\nkind: Model\n"})
    assert issue.line == 4


def test_an_alias_bomb_is_rejected_quickly() -> None:
    started = time.perf_counter()
    issue = single_issue({"bomb.yaml": ALIAS_BOMB})
    assert time.perf_counter() - started < 1.0
    assert "alias bomb" in issue.message


def test_an_alias_bomb_in_a_valid_looking_document_is_rejected_before_construction() -> None:
    document = "apiVersion: modelops/v1\nkind: Model\nmetadata:\n  name: m\n  annotations:\n" + "".join(
        f"    k{i}: &k{i} [{', '.join([f'*k{i - 1}'] * 9) if i else 'x'}]\n" for i in range(9)
    )
    started = time.perf_counter()
    issue = single_issue({"m.yaml": document})
    assert time.perf_counter() - started < 1.0
    assert "alias bomb" in issue.message


def test_aliases_that_expand_modestly_are_allowed(bundle: BundleData) -> None:
    files = bundle.files()
    files["models/fraud-rf.yaml"] = files["models/fraud-rf.yaml"].replace(
        "  name: fraud-rf\n", "  name: fraud-rf\n  labels: &labels {team: risk}\n  annotations: *labels\n", 1
    )
    bundle.model["metadata"].update(labels={"team": "risk"}, annotations={"team": "risk"})
    assert ir.load_bundle_files(files).digest() == bundle.load().digest()


def test_a_50_mb_file_is_rejected_without_parsing() -> None:
    started = time.perf_counter()
    issue = single_issue({"big.yaml": b"a: " + b"x" * (50 * 2**20)})
    assert time.perf_counter() - started < 2.0
    assert issue.file == "big.yaml"
    assert issue.message == "file is too large (50.0 MiB; the limit is 8 MiB)"


def test_a_50_mb_file_on_disk_is_rejected_by_its_size(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    with big.open("wb") as handle:
        handle.truncate(50 * 2**20)  # sparse: the loader must look at the size, not read the content
    (issue,) = path_issues(big)
    assert (issue.file, issue.message) == ("big.yaml", "file is too large (50.0 MiB; the limit is 8 MiB)")


def test_a_50_mb_file_inside_a_folder_is_rejected_and_the_rest_still_checked(tmp_path: Path) -> None:
    write_folder(tmp_path, fresh())
    with (tmp_path / "huge.yaml").open("wb") as handle:
        handle.truncate(50 * 2**20)
    (issue,) = path_issues(tmp_path)
    assert (issue.file, issue.message) == ("huge.yaml", "file is too large (50.0 MiB; the limit is 8 MiB)")


def test_every_broken_file_is_reported_and_good_files_still_load(bundle: BundleData) -> None:
    files: dict[str, str | bytes] = {**bundle.files(), "junk.bin.yaml": b"\x00\x01", "empty.yaml": ""}
    with pytest.raises(ir.IRValidationError) as caught:
        ir.load_bundle_files(files)
    assert [(i.file, i.message) for i in caught.value.issues] == [
        ("empty.yaml", "the file is empty"),
        ("junk.bin.yaml", "binary content: an IR file must be UTF-8 YAML or JSON text"),
    ]


def test_a_missing_path_is_an_issue(tmp_path: Path) -> None:
    (issue,) = path_issues(tmp_path / "nope")
    assert issue.message == "no such file or directory"


def test_an_empty_folder_is_an_issue(tmp_path: Path) -> None:
    (issue,) = path_issues(tmp_path)
    assert (issue.file, issue.message) == (str(tmp_path), "the folder holds no .yaml, .yml or .json files")


def test_a_folder_of_non_ir_files_is_an_issue(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("# hi\n")
    (tmp_path / ".hidden.yaml").write_text("kind: Model\n")
    (issue,) = path_issues(tmp_path)
    assert issue.message == "the folder holds no .yaml, .yml or .json files"


# ---------------------------------------------------------------------------------------------- archives


def tarball(members: list[tarfile.TarInfo | tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                archive.addfile(member)
            else:
                name, data = member
                info = tarfile.TarInfo(name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def tar_issues(data: bytes) -> list[ir.Issue]:
    with pytest.raises(ir.IRValidationError) as caught:
        ir.load_bundle_tarball(data, "bundle.tar.gz")
    return caught.value.issues


def bundle_members(bundle: BundleData) -> list[tarfile.TarInfo | tuple[str, bytes]]:
    return [(name, text.encode()) for name, text in bundle.files().items()]


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (("../evil.yaml", b"kind: Model\n"), "paths in a bundle must be relative and stay inside it"),
        (("flows/../../evil.yaml", b"kind: Model\n"), "paths in a bundle must be relative and stay inside it"),
        (("/etc/evil.yaml", b"kind: Model\n"), "paths in a bundle must be relative and stay inside it"),
        (link("models/link.yaml", "/etc/passwd"), "only regular files are allowed in a bundle (links refused)"),
        (
            link("models/hard.yaml", "pipeline.yaml", tarfile.LNKTYPE),
            "only regular files are allowed in a bundle (links refused)",
        ),
    ],
    ids=["dot-dot", "dot-dot-inside", "absolute", "symlink", "hardlink"],
)
def test_an_archive_member_escaping_the_bundle_is_refused(
    bundle: BundleData, member: tarfile.TarInfo | tuple[str, bytes], message: str
) -> None:
    issues = tar_issues(tarball([*bundle_members(bundle), member]))
    name = member.name if isinstance(member, tarfile.TarInfo) else member[0]
    assert [(i.file, i.message) for i in issues] == [(name, message)]


def test_an_archive_holding_only_an_escaping_member_gives_that_issue_alone() -> None:
    issues = tar_issues(tarball([("../evil.yaml", b"kind: Model\n")]))
    assert [i.message for i in issues] == ["paths in a bundle must be relative and stay inside it"]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"this is not gzip at all", "not a gzip file"),
        (b"\x1f\x8b\x08\x00" + b"\xde\xad\xbe\xef" * 64, ""),
    ],
    ids=["empty", "not-gzip", "corrupt-gzip"],
)
def test_a_corrupt_archive_is_one_issue(data: bytes, reason: str) -> None:
    (issue,) = tar_issues(data)
    assert issue.file == "bundle.tar.gz"
    assert issue.message.startswith("not a readable .tar.gz archive (")
    assert reason in issue.message


def test_a_truncated_archive_is_one_issue(bundle: BundleData) -> None:
    data = tarball(bundle_members(bundle))
    (issue,) = tar_issues(data[: len(data) // 2])
    assert issue.message.startswith("not a readable .tar.gz archive")


def test_an_archive_without_ir_files_is_one_issue() -> None:
    (issue,) = tar_issues(tarball([("README.md", b"hello")]))
    assert (issue.file, issue.message) == ("bundle.tar.gz", "the archive holds no .yaml, .yml or .json files")


def test_a_corrupt_archive_on_disk_is_one_issue(tmp_path: Path) -> None:
    path = tmp_path / "bundle.tar.gz"
    path.write_bytes(os.urandom(4096))
    (issue,) = path_issues(path)
    assert issue.message.startswith("not a readable .tar.gz archive")


def write_folder(root: Path, bundle: BundleData) -> None:
    for name, text in bundle.files().items():
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)


def test_an_archive_that_unpacks_to_more_than_the_bundle_limit_stops_before_decompressing_it() -> None:
    import io
    import tarfile

    from ir.load import MAX_BUNDLE_BYTES, load_tarball

    class Zeros(io.RawIOBase):
        def __init__(self, size: int) -> None:
            self.left = size

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
            n = min(len(buffer), self.left)
            buffer[:n] = bytes(n)
            self.left -= n
            return n

    size = MAX_BUNDLE_BYTES * 4
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz", compresslevel=1) as archive:
        info = tarfile.TarInfo("padding.bin")
        info.size = size
        archive.addfile(info, io.BufferedReader(Zeros(size)))
        pipeline = tarfile.TarInfo("pipeline.yaml")
        pipeline.size = 4
        archive.addfile(pipeline, io.BytesIO(b"a: 1"))
    docs, issues = load_tarball(raw.getvalue(), "bomb.tar.gz")
    assert docs == []
    assert [str(i) for i in issues] == [
        f"bomb.tar.gz: the archive decompresses to more than {MAX_BUNDLE_BYTES // 2**20} MiB (the bundle limit)"
    ]
