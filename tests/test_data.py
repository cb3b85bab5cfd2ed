import gzip
import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from lptlib.config import parse
from lptlib.data import FASHION_MNIST_COARSE, Normalization, build_data, build_transforms, find_fashion_mnist, read_idx
from lptlib.data import datasets as ds


def write_idx(path, array, magic_dims=None, gz=True):
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    opener = gzip.open if gz else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())


def fake_fashion_mnist(folder, per_class=60, test_per_class=5, gz=True):
    """A tiny Fashion-MNIST in idx format: pixel value = label * 20 (so images identify their class)."""
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for split, n in (("train", per_class), ("t10k", test_per_class)):
        labels = np.tile(np.arange(10), n)
        images = np.repeat(labels[:, None, None] * 20, 28, 1).repeat(28, 2)
        write_idx(folder / f"{split}-images-idx3-ubyte{suffix}", images, gz=gz)
        write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", labels, gz=gz)
    return folder


# ------------------------------------------------------------------------------- miniature
@pytest.fixture(scope="module")
def miniature():
    return build_data(parse().data)


def test_miniature_split_sizes(miniature):
    assert miniature.classnames[0] == "t-shirt" and miniature.num_classes == 10
    np.testing.assert_array_equal(miniature.train_counts, [500, 299, 179, 107, 64, 38, 23, 13, 8, 5])
    assert len(miniature.train) == 1_236
    np.testing.assert_array_equal(np.bincount(miniature.val.targets), [100] * 10)
    np.testing.assert_array_equal(np.bincount(miniature.test.targets), [1_000] * 10)  # the whole test set
    capped = build_data(parse(data={"max_test_per_class": 300}).data)
    np.testing.assert_array_equal(np.bincount(capped.test.targets), [300] * 10)  # the first 300 per class
    np.testing.assert_array_equal(np.bincount(miniature.source.targets), [3_000] * 10)


def test_miniature_pools_are_disjoint(miniature):
    def keys(d):
        return {d.images[i].tobytes() + bytes([int(d.targets[i])]) for i in range(len(d))}

    source, train, val = keys(miniature.source), keys(miniature.train), keys(miniature.val)
    # Fashion-MNIST has a few exact duplicate images, so compare with index-level disjointness as well
    assert len(train & val) <= 1 and len(source & train) <= 5
    assert len(train) >= 1_230 and len(val) >= 995


def test_miniature_is_deterministic_and_seeded():
    a, b = build_data(parse().data), build_data(parse().data)
    np.testing.assert_array_equal(a.train.images, b.train.images)
    c = build_data(parse(data={"split_seed": 1}).data)
    assert not np.array_equal(a.train.images, c.train.images)


def test_a_seed_draws_its_own_split_from_the_fixed_target_pool():
    """split_seed null (the default): the run's seed draws the long-tailed train set and val; the source pool (what
    the foundation models were pretrained on) and the test set never change."""
    cfg = parse().data
    a, b, again = build_data(cfg, 0), build_data(cfg, 1), build_data(cfg, 1)
    np.testing.assert_array_equal(b.train.images, again.train.images)
    assert not np.array_equal(a.train.images, b.train.images) and not np.array_equal(a.val.images, b.val.images)
    np.testing.assert_array_equal(a.train_counts, b.train_counts)
    np.testing.assert_array_equal(a.source.images, b.source.images)
    np.testing.assert_array_equal(a.test.images, b.test.images)
    pinned = parse(data={"split_seed": 0}).data
    np.testing.assert_array_equal(build_data(pinned, 1).train.images, a.train.images)


def test_miniature_index_level_disjointness(tmp_path):
    folder = fake_fashion_mnist(tmp_path / "fm", per_class=600, test_per_class=3)
    # make every image unique: pixel (0, 0) and (0, 1) encode the index
    for split, n in (("train", 6000), ("t10k", 30)):
        path = folder / f"{split}-images-idx3-ubyte.gz"
        images = read_idx(path).copy()
        images[:, 0, 0], images[:, 0, 1] = np.arange(n) % 256, np.arange(n) // 256
        write_idx(path, images)
    lt = build_data(parse(data={"root": str(folder), "n_max": 50, "imbalance": 10, "val_per_class": 5}).data)

    def ids(d):
        return set((d.images[:, 0, 0].astype(int) + 256 * d.images[:, 0, 1].astype(int)).tolist())

    assert not ids(lt.source) & ids(lt.train) and not ids(lt.train) & ids(lt.val) and not ids(lt.source) & ids(lt.val)
    assert len(ids(lt.source)) == 3000


def test_max_test_per_class(tmp_path):
    lt = build_data(parse(data={"max_test_per_class": 7}).data)
    np.testing.assert_array_equal(np.bincount(lt.test.targets), [7] * 10)


def test_coarse_labels_cover_four_groups():
    assert sorted(set(FASHION_MNIST_COARSE.tolist())) == [0, 1, 2, 3]
    assert FASHION_MNIST_COARSE[[0, 2, 4, 6]].tolist() == [0] * 4  # tops
    assert FASHION_MNIST_COARSE[[5, 7, 9]].tolist() == [2] * 3  # footwear


def test_fashion_mnist_found_in_a_configured_folder(tmp_path):
    folder = fake_fashion_mnist(tmp_path / "fm", gz=False)
    files = find_fashion_mnist(str(folder))
    assert files["train_images"] == folder / "train-images-idx3-ubyte"
    lt = build_data(parse(data={"root": str(folder), "n_max": 20, "imbalance": 10, "val_per_class": 2}).data)
    assert lt.train_counts.tolist() == config_counts(20, 10)
    img, label = lt.train[0]
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (28, 28)
    assert np.asarray(img)[0, 0, 0] == label * 20  # images stay paired with their labels


def config_counts(n_max, imbalance):
    from lptlib.data import lt_counts

    return lt_counts(n_max, imbalance, 10)


# ----------------------------------------------------------------------------- CIFAR-100-LT
def fake_cifar100(root, per_class):
    base = root / "cifar-100-python"
    base.mkdir(parents=True)
    for split, n in (("train", per_class), ("test", 2)):
        labels = np.repeat(np.arange(100), n)
        data = (np.repeat(labels[:, None], 3 * 32 * 32, 1) % 256).astype(np.uint8)
        with open(base / split, "wb") as f:
            pickle.dump({"data": data, "fine_labels": labels.tolist()}, f)
    with open(base / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"class_{i}" for i in range(100)]}, f)


def test_cifar100_lt_builder(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    fake_cifar100(tmp_path, per_class=6)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)  # the md5s are of the real files
    cfg = parse(data={"name": "cifar100_lt", "root": str(tmp_path), "n_max": 6, "imbalance": 6}).data
    lt = build_data(cfg)
    assert lt.num_classes == 100 and lt.val is None and lt.classnames[1] == "class 1"
    np.testing.assert_array_equal(lt.train_counts, config_lt(6, 6))
    # groups always use IF 100's profile (500 ... 5 at paper scale), whatever the imbalance
    np.testing.assert_array_equal(lt.shot_counts, config_lt(6, 100))
    img, y = lt.train[len(lt.train) - 1]
    assert y == 99 and np.asarray(img)[0, 0, 0] == 99


def config_lt(n_max, imb):
    from lptlib.data import lt_counts

    return lt_counts(n_max, imb, 100)


# -------------------------------------------------------------------------------- OLTR files
def make_oltr(tmp_path, name="places_lt"):
    root, splits = tmp_path / "images", tmp_path / "splits"
    splits.mkdir()
    files = ds.OLTR_SPLIT_FILES[name]
    classes = ["airfield", "alley", "bakery"]
    for split, fname in files.items():
        lines = []
        per_class = {"train": [5, 3, 1], "val": [2, 2, 2], "test": [3, 3, 3]}[split]
        for c, (cls, n) in enumerate(zip(classes, per_class)):
            for i in range(n):
                rel = f"{split}/{cls}/{i:04d}.jpg"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (40, 30), color=(c * 80, 0, 0)).save(root / rel)
                lines.append(f"{rel} {c}")
        (splits / fname).write_text("\n".join(lines) + "\n")
    return root, splits


def test_oltr_dataset_from_split_files(tmp_path):
    root, splits = make_oltr(tmp_path)
    lt = build_data(parse(data={"name": "places_lt", "root": str(root), "split_dir": str(splits)}).data)
    assert lt.classnames == ["airfield", "alley", "bakery"]
    assert lt.train_counts.tolist() == [5, 3, 1] and len(lt.val) == 6 and len(lt.test) == 9
    img, y = lt.test[8]
    assert y == 2 and img.size == (40, 30) and img.getpixel((0, 0))[0] == 160
    norm = Normalization((0.5,) * 3, (0.5,) * 3)
    train_tf, test_tf = build_transforms(parse(data={"image_size": 16, "test_resize_ratio": 1.25}).data, norm)
    x, _ = lt.with_transforms(train_tf, test_tf).test[0]
    assert x.shape == (3, 16, 16) and torch.isfinite(x).all()


def test_inat_has_no_val_split_and_json_keeps_category_ids(tmp_path):
    root, splits = tmp_path / "images", tmp_path / "splits"
    splits.mkdir()
    for c in (1, 0):
        (root / "train_val2018" / "Plantae" / str(c)).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(root / "train_val2018" / "Plantae" / str(c) / "a.jpg")
    for fname in ds.INAT_JSON_FILES.values():
        doc = {
            "images": [{"id": i, "file_name": f"train_val2018/Plantae/{c}/a.jpg"} for i, c in ((5, 1), (6, 0))],
            "annotations": [{"image_id": 5, "category_id": 1}, {"image_id": 6, "category_id": 0}],
            "categories": [{"id": 1, "name": "Quercus robur"}, {"id": 0, "name": "Bellis perennis"}],
        }
        (splits / fname).write_text(json.dumps(doc))
    lt = build_data(parse(data={"name": "inat2018", "root": str(root), "split_dir": str(splits)}).data)
    assert lt.val is None and lt.num_classes == 2 and lt.classnames == ["Bellis perennis", "Quercus robur"]
    assert lt.train.targets.tolist() == [1, 0]


def test_classnames_file(tmp_path):
    root, splits = make_oltr(tmp_path)
    names = tmp_path / "names.txt"
    names.write_text("air field\nalley way\nbakery shop\n")
    kw = {"name": "places_lt", "root": str(root), "split_dir": str(splits), "classnames_file": str(names)}
    assert build_data(parse(data=kw).data).classnames[2] == "bakery shop"


def test_transforms_follow_the_backbone():
    norm = Normalization((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711), "bicubic")
    train_tf, test_tf = build_transforms(
        parse(data={"image_size": 224, "test_resize_ratio": 256 / 224, "crop_scale": [0.08, 1.0]}).data, norm
    )
    img = Image.new("RGB", (300, 200), color=(255, 255, 255))
    x = test_tf(img)
    assert x.shape == (3, 224, 224)
    np.testing.assert_allclose(x[:, 0, 0].numpy(), [(1 - m) / s for m, s in zip(norm.mean, norm.std)], rtol=1e-5)
    assert test_tf.transforms[0].size == 256 and "BICUBIC" in str(test_tf.transforms[0].interpolation)
    assert train_tf(img).shape == (3, 224, 224)
