"""Loading forms: a folder, one multi-document YAML, a .tar.gz, JSON files: the same bundle, the same digest."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import yaml
from bundle_kit import BundleData, model_doc

import ir
from ir.load import load_path

DIGITS = Path(__file__).resolve().parents[2] / "examples" / "digits"


def documents_of(folder: Path) -> list[tuple[str, list[object]]]:
    """The documents of every IR file below `folder`, by relative name, in file order."""
    out = []
    for path in sorted(folder.rglob("*.yaml")):
        out.append((path.relative_to(folder).as_posix(), list(yaml.safe_load_all(path.read_text()))))
    return out


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    return root


def as_tarball(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, text in sorted(files.items()):
            data = text.encode()
            info = tarfile.TarInfo(f"bundle/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def forms(files: dict[str, str], tmp_path: Path) -> dict[str, ir.Bundle]:
    """The same bundle loaded in every supported form."""
    documents = [doc for text in files.values() for doc in yaml.safe_load_all(text)]
    folder = write_tree(tmp_path / "folder", files)
    single = tmp_path / "bundle.yaml"
    single.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    archive = tmp_path / "bundle.tar.gz"
    archive.write_bytes(as_tarball(files))
    json_folder = write_tree(
        tmp_path / "json",
        {f"doc-{i:02d}.json": json.dumps(doc, indent=1) for i, doc in enumerate(documents)},
    )
    json_list = tmp_path / "bundle.json"
    json_list.write_text(json.dumps(documents))
    yml_folder = write_tree(tmp_path / "yml", {name.replace(".yaml", ".yml"): text for name, text in files.items()})
    return {
        "files": ir.load_bundle_files(files),
        "folder": ir.load_bundle(folder),
        "multi-document yaml": ir.load_bundle(single),
        "tar.gz on disk": ir.load_bundle(archive),
        "tar.gz in memory": ir.load_bundle_tarball(archive.read_bytes()),
        "json files": ir.load_bundle(json_folder),
        "one json list": ir.load_bundle(json_list),
        ".yml folder": ir.load_bundle(yml_folder),
    }


def test_every_form_of_the_small_bundle_has_the_same_digest(bundle: BundleData, tmp_path: Path) -> None:
    loaded = forms(bundle.files(), tmp_path)
    digests = {form: b.digest() for form, b in loaded.items()}
    assert set(digests.values()) == {bundle.load().digest()}, digests


def test_every_form_of_the_digits_example_has_the_same_digest(tmp_path: Path) -> None:
    files = {path.relative_to(DIGITS).as_posix(): path.read_text() for path in sorted(DIGITS.rglob("*.yaml"))}
    loaded = forms(files, tmp_path)
    digests = {form: b.digest() for form, b in loaded.items()}
    assert set(digests.values()) == {ir.load_bundle(DIGITS).digest()}, digests


def test_every_form_renders_the_same_values(bundle: BundleData, tmp_path: Path) -> None:
    texts = {form: ir.to_yaml(ir.render(b)) for form, b in forms(bundle.files(), tmp_path).items()}
    assert len(set(texts.values())) == 1


def test_a_tarball_with_the_files_at_its_root_equals_one_with_a_top_folder(bundle: BundleData) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, text in bundle.files().items():
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            archive.addfile(info, io.BytesIO(text.encode()))
    assert (
        ir.load_bundle_tarball(buffer.getvalue()).digest()
        == ir.load_bundle_tarball(as_tarball(bundle.files())).digest()
    )


def test_layout_comments_and_key_order_do_not_change_the_digest(bundle: BundleData) -> None:
    reordered = {
        name: "# a comment\n" + yaml.safe_dump_all([dict(reversed(list(d.items()))) for d in docs], sort_keys=True)
        for name, docs in bundle.layout.items()
    }
    assert ir.load_bundle_files(reordered).digest() == bundle.load().digest()


def test_defaults_written_out_do_not_change_the_digest(bundle: BundleData) -> None:
    before = bundle.load().digest()
    bundle.model["spec"].update(version="1", replicas=1, options={})
    bundle.flow["spec"].update(batchSize=1000, errorPolicy={"mode": "fail"})
    assert bundle.load().digest() == before


def test_a_change_of_meaning_changes_the_digest(bundle: BundleData) -> None:
    before = bundle.load().digest()
    bundle.flow["spec"]["batchSize"] = 999
    assert bundle.load().digest() != before


def test_documents_no_flow_uses_are_left_out_of_the_digest(bundle: BundleData) -> None:
    before = bundle.load().digest()
    bundle.add("models/unused.yaml", model_doc("unused"))
    loaded = bundle.load()
    assert "unused" in loaded.models
    assert loaded.digest() == before


def test_the_canonical_form_loads_back_to_the_same_digest(bundle: BundleData) -> None:
    loaded = bundle.load()
    again = ir.bundle_from_canonical(loaded.canonical())
    assert again.digest() == loaded.digest()
    assert again.canonical_json() == loaded.canonical_json()


def test_a_single_file_reports_issues_under_its_own_name(bundle: BundleData, tmp_path: Path) -> None:
    bundle.model["spec"]["runtime"] = "sklern"
    single = tmp_path / "all.yaml"
    single.write_text(yaml.safe_dump_all(list(bundle.documents()), sort_keys=False))
    docs, issues = load_path(single)
    assert not issues and {d.file for d in docs} == {"all.yaml"}
    with pytest.raises(ir.IRValidationError) as caught:
        ir.load_bundle(single)
    assert [(i.file, i.document, i.path) for i in caught.value.issues] == [
        ("all.yaml", "Model fraud-rf", "spec.runtime")
    ]


def test_a_folder_reports_issues_under_relative_paths(bundle: BundleData, tmp_path: Path) -> None:
    bundle.flow["spec"]["source"] = "txns-im"
    folder = write_tree(tmp_path / "b", bundle.files())
    with pytest.raises(ir.IRValidationError) as caught:
        ir.load_bundle(folder)
    assert [(i.file, i.path) for i in caught.value.issues] == [("flows/f1.yaml", "spec.source")]
