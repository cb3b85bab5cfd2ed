"""Content digests (lptlib.data.digest) and the pipeline's data signature (lptlib.data.signature): a data or weight
file changed in place changes them; an unchanged one is read from the cache; the same data elsewhere give the same
signature."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import yaml

from lptlib.config import parse
from lptlib.data import DataError, FileListDataset, find_fashion_mnist
from lptlib.data import digest as dg
from lptlib.data.signature import main, signature


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LPTLIB_CACHE", str(tmp_path / "cache"))


def _edit_in_place(path, data: bytes) -> None:
    """Rewrite a file's bytes keeping its size (and restoring its mtime: a careless copy tool would)."""
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))


def test_digest_is_size_and_sha256_of_the_bytes(tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(b"hello")
    assert dg.file_digests([f]) == ["5:2cf24dba5fb0a30e26e83b2ac5b9e29e"]


def test_unchanged_files_come_from_the_cache_and_changed_ones_are_hashed_again(tmp_path, monkeypatch):
    files = [tmp_path / f"{i}.jpg" for i in range(3)]
    for i, f in enumerate(files):
        f.write_bytes(bytes([i]) * 100)
    first = dg.file_digests(files)
    hashed = []
    monkeypatch.setattr(dg, "hash_file", lambda p: hashed.append(os.path.basename(p)) or "x")
    assert dg.file_digests(files) == first and hashed == []  # one stat each, no read
    _edit_in_place(files[1], b"\xff")
    assert dg.file_digests(files)[1] == "x" and hashed == ["1.jpg"]


def test_an_image_replaced_in_place_changes_the_split_digest(tmp_path):
    for name in ("a/0.jpg", "b/0.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"pixels")
    ds = FileListDataset(tmp_path, ["a/0.jpg", "b/0.jpg"], [0, 1])
    before = ds.content_digest()
    _edit_in_place(tmp_path / "b" / "0.jpg", b"PIXELS")
    assert ds.content_digest() != before
    moved = tmp_path.with_name(tmp_path.name + "_moved")
    shutil.copytree(tmp_path, moved)
    _edit_in_place(moved / "b" / "0.jpg", b"PIXELS")
    assert FileListDataset(moved, ["a/0.jpg", "b/0.jpg"], [0, 1]).content_digest() == ds.content_digest()


def test_the_signature_changes_with_a_label_file_and_not_with_where_the_data_lie(tmp_path):
    """The case of a data.root copy whose labels were changed: `dvc status` said up to date."""
    copy = tmp_path / "fm"
    copy.mkdir()
    for p in find_fashion_mnist(None).values():
        shutil.copy2(p, copy / p.name)
    params = tmp_path / "params.yaml"
    out = tmp_path / "signature.json"

    def run(root) -> dict:
        params.write_text(yaml.safe_dump({"preset": "miniature", "data": {"root": str(root)}}))
        assert main([str(out), "--params", str(params)]) == 0
        return json.loads(out.read_text())

    installed = signature(parse())
    assert run(copy) == installed  # the same files elsewhere: the same signature
    labels = next(copy.glob("train-labels*"))
    raw = bytearray(labels.read_bytes())
    raw[-1] ^= 1  # one changed byte (one label, gzipped or not)
    _edit_in_place(labels, bytes(raw))
    changed = run(copy)
    assert changed["data"][labels.name] != installed["data"][labels.name]
    assert {k: v for k, v in changed["data"].items() if k != labels.name} == {
        k: v for k, v in installed["data"].items() if k != labels.name
    }


def test_a_users_weight_file_is_in_the_signature_and_the_pipelines_own_are_not(tmp_path):
    mine = tmp_path / "mine.safetensors"
    mine.write_bytes(b"weights")
    cfg = parse(backbones={"visual": {"name": "vit-mini", "weights": str(mine)}})
    assert signature(cfg)["weights"] == {"backbones.visual.weights": dg.file_digests([mine])[0]}
    assert signature(parse())["weights"] == {}  # outputs/pretrain/*: the pretrain stage's outs


def test_the_oltr_signature_covers_split_files_and_every_listed_image(tmp_path):
    (tmp_path / "splits").mkdir()
    for split in ("train", "val", "test"):
        (tmp_path / "splits" / f"Places_LT_{split}.txt").write_text(f"{split}/a/0.jpg 0\n{split}/b/0.jpg 1\n")
        for c in "ab":
            (tmp_path / "img" / split / c).mkdir(parents=True)
            (tmp_path / "img" / split / c / "0.jpg").write_bytes(b"\xff\xd8\xff" + split.encode())  # a JPEG's start
    cfg = parse(data={"name": "places_lt", "root": str(tmp_path / "img"), "split_dir": str(tmp_path / "splits")})
    names = set(signature(cfg)["data"])
    assert names == {f"split_dir/Places_LT_{s}.txt" for s in ("train", "val", "test")} | {
        f"{s}/{c}/0.jpg" for s in ("train", "val", "test") for c in "ab"
    }
    (tmp_path / "img" / "val" / "b" / "0.jpg").write_text("<html>not found</html>")  # a broken download
    with pytest.raises(DataError, match=r"1 file\(s\) listed in the split files are not images .*'val/b/0\.jpg'"):
        signature(cfg)
