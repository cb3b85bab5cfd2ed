"""Datasets: the offline miniature (Fashion-MNIST-LT), CIFAR-100-LT and OLTR split files.

Every builder returns an `LTData`: train / val / test image datasets with integer `targets`,
the class names, and the counts that define the many / medium / few groups.
Spec: docs/methods.md#the-offline-miniature, docs/paper-scale.md#datasets.
"""

from __future__ import annotations

import copy
import dataclasses
import gzip
import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import DataLoader

from lptlib.data.config import DataConfig
from lptlib.data.profiles import SHOT_GROUPS, lt_counts, shot_groups
from lptlib.data.samplers import make_loader
from lptlib.data.transforms import Normalization, build_transforms
from lptlib.paths import resolve

POOL_SEED = 0  # the fixed source / target partition of the miniature (pretraining sees the source pool only)


Transform = Callable[[Image.Image], object]


class DataError(FileNotFoundError):
    """A dataset file is missing or malformed; the message names the files and the fix."""


# -------------------------------------------------------------------------------- datasets
class ImageDataset:
    """Indexable (image, label) pairs with integer `targets` and a settable `transform`."""

    targets: np.ndarray
    transform: Transform | None = None

    def content_digest(self) -> str:
        """A digest of which images these are (pixels or file paths), not of the transform."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.targets)

    def load(self, i: int) -> Image.Image:
        raise NotImplementedError

    def __getitem__(self, i: int):
        img = self.load(i)
        return (self.transform(img) if self.transform is not None else img), int(self.targets[i])

    def subset(self, indices: Sequence[int] | np.ndarray) -> "ImageDataset":
        raise NotImplementedError

    def with_transform(self, transform: Transform | None) -> "ImageDataset":
        new = copy.copy(self)
        new.transform = transform
        return new


class ArrayDataset(ImageDataset):
    """Images held in memory as uint8 arrays, (N, H, W) grayscale or (N, H, W, 3) RGB."""

    def __init__(self, images: np.ndarray, targets: np.ndarray, transform: Transform | None = None):
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} labels")
        self.images = images
        self.targets = np.asarray(targets, dtype=np.int64)
        self.transform = transform

    def load(self, i: int) -> Image.Image:
        return Image.fromarray(self.images[i]).convert("RGB")

    def content_digest(self) -> str:
        return hashlib.sha256(np.ascontiguousarray(self.images).tobytes()).hexdigest()[:16]

    def subset(self, indices):
        indices = np.asarray(indices, dtype=np.int64)
        return ArrayDataset(self.images[indices], self.targets[indices], self.transform)


class FileListDataset(ImageDataset):
    """Images on disk listed as (path relative to `root`, label): the OLTR split-file datasets."""

    def __init__(
        self, root: str | os.PathLike, paths: Sequence[str], targets: Sequence[int], transform: Transform | None = None
    ):
        self.root = Path(root)
        self.paths = list(paths)
        self.targets = np.asarray(targets, dtype=np.int64)
        self.transform = transform

    def load(self, i: int) -> Image.Image:
        path = self.root / self.paths[i]
        try:
            with Image.open(path) as img:
                return img.convert("RGB")
        except FileNotFoundError:
            raise DataError(
                f"image {path} listed in the split file does not exist; is data.root the folder "
                "the split-file paths are relative to?"
            ) from None

    def content_digest(self) -> str:
        """The images' paths and contents (size and sha256 of each file, cached: `lptlib.data.digest`), so an image
        replaced in place changes it."""
        from lptlib.data.digest import files_digest

        try:
            return files_digest([self.root / p for p in self.paths], self.paths)
        except FileNotFoundError as e:
            raise DataError(
                f"{e}: an image listed in the split file is missing; is data.root the folder the split-file paths "
                "are relative to?"
            ) from None

    def subset(self, indices):
        indices = np.asarray(indices, dtype=np.int64)
        return FileListDataset(self.root, [self.paths[i] for i in indices], self.targets[indices], self.transform)


@dataclass
class LTData:
    """A long-tailed benchmark: what every stage reads. It carries the `data` section it was built from, so the
    many / medium / few groups (`groups`, from `shot_counts` under `data.shot_convention`) are computed once, here,
    and every evaluation of the run uses them; `transformed(normalization)` gives a backbone's view of the splits
    and `eval_loaders(batch_size)` their sequential val / test loaders."""

    name: str
    classnames: list[str]
    train: ImageDataset
    val: ImageDataset | None
    test: ImageDataset
    source: ImageDataset | None = None  # the miniature's source pool (pretraining only)
    group_counts: np.ndarray | None = field(default=None, repr=False)  # counts defining shot groups
    config: DataConfig = field(default_factory=lambda: DataConfig(), repr=False)  # the section it was built from
    groups: np.ndarray = field(init=False, repr=False)  # 'many' / 'medium' / 'few' per class

    def __post_init__(self) -> None:
        self.groups = shot_groups(self.shot_counts, self.config.shot_convention)

    @property
    def shot_convention(self) -> str:
        return self.config.shot_convention

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    @property
    def train_counts(self) -> np.ndarray:
        return np.bincount(self.train.targets, minlength=self.num_classes)

    @property
    def shot_counts(self) -> np.ndarray:
        """Training counts that define many/medium/few (IF 100's counts for CIFAR-100-LT IF 50/10)."""
        return self.train_counts if self.group_counts is None else self.group_counts

    def summary(self) -> dict:
        """The data stage's metrics (metrics/data.json): split sizes, imbalance, the shot convention and group
        sizes, the class names, training counts and the group of every class."""
        counts = self.train_counts
        return {
            "dataset": self.name,
            "num_classes": self.num_classes,
            "train_images": len(self.train),
            "val_images": len(self.val) if self.val is not None else 0,
            "test_images": len(self.test),
            "source_images": len(self.source) if self.source is not None else 0,
            "imbalance": float(counts.max() / max(1, counts[counts > 0].min())),
            "shot_convention": self.shot_convention,
            **{f"n_{g}": int((self.groups == g).sum()) for g in SHOT_GROUPS},
            "classnames": list(self.classnames),
            "class_counts": counts.tolist(),
            "groups": self.groups.tolist(),
        }

    def signature(self) -> dict[str, str]:
        """What a checkpoint or cache must have been made from: per split, the number of images, a digest of the
        labels and a digest of the images (pixels, or file paths); the dataset and class names."""
        sig = {
            "dataset": self.name,
            "classnames": hashlib.sha256(json.dumps(self.classnames).encode()).hexdigest()[:16],
        }
        for split in ("train", "val", "test", "source"):
            ds = getattr(self, split)
            if ds is not None:
                labels = np.asarray(ds.targets, dtype=np.int64)
                sig[split] = f"{len(labels)}:{hashlib.sha256(labels.tobytes()).hexdigest()[:16]}:{ds.content_digest()}"
        return sig

    def with_transforms(self, train: Transform | None, test: Transform | None) -> LTData:
        """A copy whose train split uses `train` and whose val/test/source splits use `test`."""
        return dataclasses.replace(
            self,
            train=self.train.with_transform(train),
            val=self.val.with_transform(test) if self.val is not None else None,
            test=self.test.with_transform(test),
            source=self.source.with_transform(test) if self.source is not None else None,
        )

    def transformed(self, normalization: Normalization, augment: bool = True) -> LTData:
        """The splits as a backbone sees them (`lptlib.data.transforms.build_transforms` with this data's sizes and
        crops): the training transform on train (the test transform with `augment=False`), the test transform on
        the other splits."""
        train, test = build_transforms(self.config, normalization)
        return self.with_transforms(train if augment else test, test)

    def eval_loaders(self, batch_size: int) -> tuple[DataLoader | None, DataLoader]:
        """Sequential (val, test) loaders; val is None when the benchmark has no val split."""
        workers = self.config.num_workers
        val = make_loader(self.val, batch_size, num_workers=workers) if self.val is not None else None
        return val, make_loader(self.test, batch_size, num_workers=workers)


# ------------------------------------------------------------------------ Fashion-MNIST (miniature)
FASHION_MNIST_CLASSES = [
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
]
#: the 4 coarse labels `vit-mini` is pretrained on (docs/methods.md#the-offline-miniature): tops, trousers+dress, footwear, bag
FASHION_MNIST_COARSE = np.array([0, 1, 0, 1, 0, 2, 0, 2, 3, 2])
FASHION_MNIST_COARSE_NAMES = ["top", "trouser or dress", "footwear", "bag"]
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def fashion_mnist_search_paths(root: str | None) -> list[Path]:
    """Folders searched, in order, for the four idx files: those under `data.root` alone when it is set (a root
    without the files is an error, never a fall back to another copy), else `$LPTLIB_DATA`, the Debian package's
    folder and lptlib's cache."""
    if root:
        r = resolve(root)
        return [r, r / "fashion-mnist", r / "FashionMNIST" / "raw"]
    paths = []
    if os.environ.get("LPTLIB_DATA"):
        d = Path(os.environ["LPTLIB_DATA"]).expanduser()
        paths += [d / "fashion-mnist", d / "FashionMNIST" / "raw"]
    paths += [DEBIAN_FASHION_MNIST, Path("~/.cache/lptlib/FashionMNIST/raw").expanduser()]
    return paths


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def find_fashion_mnist(root: str | None = None, download: bool = False) -> dict[str, Path]:
    """Paths of the four Fashion-MNIST idx files (gzipped or not).

    Looks in `root`, `$LPTLIB_DATA`, the Debian package's folder and lptlib's cache; with
    `download=True` falls back to torchvision's downloader (needs a network).
    """
    searched = fashion_mnist_search_paths(root)
    for folder in searched:
        found = {k: _find_idx(folder, stem) for k, stem in FASHION_MNIST_FILES.items()}
        if all(found.values()):
            return found  # type: ignore[return-value]
    if download:
        from torchvision.datasets import FashionMNIST

        cache = Path("~/.cache/lptlib").expanduser()
        FashionMNIST(str(cache), train=True, download=True)
        FashionMNIST(str(cache), train=False, download=True)
        return find_fashion_mnist(str(cache / "FashionMNIST" / "raw"))
    looked = "\n".join(f"  - {p}" for p in searched)
    if root:
        partial = [
            (folder, [stem for stem in FASHION_MNIST_FILES.values() if _find_idx(folder, stem)]) for folder in searched
        ]
        folder, present = max(partial, key=lambda fp: len(fp[1]))
        missing = [stem for stem in FASHION_MNIST_FILES.values() if stem not in present]
        holds = (
            f"{folder} holds {len(present)} of the 4 files (missing: {', '.join(missing)})"
            if present
            else ("it holds none of them" if resolve(root).is_dir() else "it does not exist")
        )
        raise DataError(
            f"data.root {root!r}: the Fashion-MNIST idx files are not there ({holds}). Looked for "
            f"{', '.join(s + '[.gz]' for s in FASHION_MNIST_FILES.values())} in:\n{looked}\n"
            "Fix: put the four files there, or set data.root: null to use the installed copy "
            "(`make data` finds or installs it); another copy is never used in its place."
        )
    raise DataError(
        "Fashion-MNIST not found. Looked for the four idx files "
        f"({', '.join(s + '[.gz]' for s in FASHION_MNIST_FILES.values())}) in:\n{looked}\n"
        "Fix: `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or put the files in a folder "
        "and set data.root to it, or set data.download: true where a network exists."
    )


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file (MNIST format: ubyte images idx3 or labels idx1), gzipped or not."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read ({e}); the file is damaged, reinstall it") from None
    if len(raw) < 8 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] not in (1, 3):
        raise DataError(f"{path}: not an unsigned-byte idx1/idx3 file (bad magic number)")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(shape)):
        raise DataError(f"{path}: header says shape {shape} but the file holds {len(raw) - offset} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape)


def stratified_halves(labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split indices 50/50 within each class: (source pool, target pool), both sorted."""
    source, target = [], []
    for c in np.unique(labels):
        perm = rng.permutation(np.flatnonzero(labels == c))
        half = len(perm) // 2
        source.append(perm[:half])
        target.append(perm[half:])
    return np.sort(np.concatenate(source)), np.sort(np.concatenate(target))


def cap_per_class(targets: np.ndarray, k: int | None) -> np.ndarray:
    """Indices of the first `k` items of every class, in dataset order (all when k is None)."""
    if k is None:
        return np.arange(len(targets))
    keep = np.zeros(len(targets), dtype=bool)
    for c in np.unique(targets):
        keep[np.flatnonzero(targets == c)[:k]] = True
    return np.flatnonzero(keep)


def build_fashion_mnist_lt(cfg: DataConfig, split_seed: int = 0) -> LTData:
    """The offline miniature (docs/methods.md#the-offline-miniature): source/target pools, LT train, balanced val, official test."""
    files = find_fashion_mnist(cfg.root, cfg.download)
    x_train, y_train = read_idx(files["train_images"]), read_idx(files["train_labels"]).astype(np.int64)
    x_test, y_test = read_idx(files["test_images"]), read_idx(files["test_labels"]).astype(np.int64)
    if len(x_train) != len(y_train) or len(x_test) != len(y_test):
        raise DataError(f"Fashion-MNIST image and label counts differ in {files}")
    num_classes = len(FASHION_MNIST_CLASSES)
    for split, y in (("train_labels", y_train), ("test_labels", y_test)):
        bad = np.flatnonzero((y < 0) | (y >= num_classes))
        if len(bad):
            raise DataError(
                f"{files[split]}: {len(bad)} labels outside 0..{num_classes - 1} (the first at index {bad[0]}: "
                f"{y[bad[0]]}); the file is damaged or not Fashion-MNIST's, reinstall it"
            )
    # the source / target partition is fixed (the foundation models are pretrained once, on the source pool);
    # the long-tailed train set and the val draw come from the target pool with the run's split seed
    source_idx, target_idx = stratified_halves(y_train, np.random.default_rng(POOL_SEED))
    rng = np.random.default_rng(split_seed)

    counts = lt_counts(cfg.n_max, cfg.imbalance, num_classes)
    train_idx, val_idx = [], []
    for c, n in enumerate(counts):
        pool = rng.permutation(target_idx[y_train[target_idx] == c])
        if n + cfg.val_per_class > len(pool):
            raise DataError(
                f"class {c}: n_max/val_per_class ask for {n + cfg.val_per_class} images but the "
                f"target pool has {len(pool)}; lower data.n_max or data.val_per_class"
            )
        train_idx.append(pool[:n])
        val_idx.append(pool[n : n + cfg.val_per_class])
    full = ArrayDataset(x_train, y_train)
    test = ArrayDataset(x_test, y_test)
    return LTData(
        name=cfg.name,
        classnames=list(FASHION_MNIST_CLASSES),
        train=full.subset(np.concatenate(train_idx)),
        val=full.subset(np.concatenate(val_idx)) if cfg.val_per_class else None,
        test=test.subset(cap_per_class(test.targets, cfg.max_test_per_class)),
        source=full.subset(source_idx),
        config=cfg,
    )


# ------------------------------------------------------------------------------- CIFAR-100-LT
def lt_subsample(targets: np.ndarray, counts: Sequence[int], seed: int = 0) -> np.ndarray:
    """Per class (in label order): shuffle its indices with a `RandomState(seed)` shared across classes and
    keep the first n_c (the LDAM-DRW / LIFT convention, `np.random.seed(0)` then one shuffle per class)."""
    rs = np.random.RandomState(seed)
    keep = []
    for c, n in enumerate(counts):
        idx = np.flatnonzero(targets == c)
        rs.shuffle(idx)
        if n > len(idx):
            raise DataError(f"class {c}: {n} images asked for, {len(idx)} available")
        keep.append(idx[:n])
    return np.concatenate(keep)


def build_cifar100_lt(cfg: DataConfig, split_seed: int = 0) -> LTData:
    """CIFAR-100-LT (exponential profile, class 0 = head, seed-0 subsampling) on torchvision's CIFAR-100.

    There is no val split by convention (LDAM/LIFT); the many/medium/few groups use IF 100's counts
    whatever the imbalance factor (LIFT).
    """
    from torchvision.datasets import CIFAR100

    root = str(resolve(cfg.root)) if cfg.root else str(Path("~/.cache/lptlib").expanduser())
    try:
        train = CIFAR100(root, train=True, download=cfg.download)
        test = CIFAR100(root, train=False, download=cfg.download)
    except RuntimeError as e:
        raise DataError(
            f"CIFAR-100 not found or corrupted under {root} ({e}). Fix: point data.root at the folder "
            "that contains cifar-100-python/ (train, test, meta), or set data.download: true "
            "where a network exists."
        ) from None
    y_train = np.asarray(train.targets, dtype=np.int64)
    counts = lt_counts(cfg.n_max, cfg.imbalance, 100)
    idx = lt_subsample(y_train, counts, split_seed)
    y_test = np.asarray(test.targets, dtype=np.int64)
    test_set = ArrayDataset(test.data, y_test)
    return LTData(
        name=cfg.name,
        classnames=[c.replace("_", " ") for c in train.classes],
        train=ArrayDataset(train.data[idx], y_train[idx]),
        val=None,
        test=test_set.subset(cap_per_class(y_test, cfg.max_test_per_class)),
        group_counts=np.asarray(lt_counts(cfg.n_max, 100.0, 100)),
        config=cfg,
    )


# ------------------------------------------------------------------------- OLTR split files
OLTR_SPLIT_FILES = {
    "places_lt": {"train": "Places_LT_train.txt", "val": "Places_LT_val.txt", "test": "Places_LT_test.txt"},
    "imagenet_lt": {"train": "ImageNet_LT_train.txt", "val": "ImageNet_LT_val.txt", "test": "ImageNet_LT_test.txt"},
    # iNaturalist 2018: the official val split is the test set; there is no val split
    "inat2018": {"train": "iNaturalist18_train.txt", "test": "iNaturalist18_val.txt"},
}
INAT_JSON_FILES = {"train": "train2018.json", "test": "val2018.json"}


def read_split_file(path: str | os.PathLike) -> tuple[list[str], list[int]]:
    """Parse an OLTR split file: one `relative/path.jpg label` per line (blank lines ignored)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"split file {path} does not exist; set data.split_dir to the folder holding it")
    paths, labels = [], []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit() or int(parts[1]) < 0:
                raise DataError(
                    f"{path}:{lineno}: expected '<relative/path> <label>' with a label >= 0, got {line.rstrip()!r}"
                )
            paths.append(parts[0].lstrip("/"))
            labels.append(int(parts[1]))
    if not paths:
        raise DataError(f"split file {path} lists no images")
    return paths, labels


def _ranges(values: Sequence[int], limit: int = 5) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2, 5, 7-8' (at most `limit` runs, then '...')."""
    runs: list[list[int]] = []
    for v in sorted(values):
        if runs and v == runs[-1][1] + 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    text = [f"{a}" if a == b else f"{a}-{b}" for a, b in runs[:limit]]
    return ", ".join(text) + (", ..." if len(runs) > limit else "")


#: the most classes a split-file dataset may have (iNaturalist 2018: 8,142; ImageNet-21k: 21,841)
MAX_CLASSES = 100_000


def check_splits(splits: Mapping[str, tuple[Sequence[str], Sequence[int]]], where: Path) -> int:
    """Validate the splits of a split-file dataset before anything is loaded; the number of classes (the largest
    label + 1: labels keep their ids, as iNaturalist's original category ids).

    A label present in val or test but not in train is an error naming the labels, as is a label beyond
    `MAX_CLASSES` (99,999,999: a hundred million classes to allocate); a path is relative and stays inside
    data.root. (A frequency-aware loss also needs a training image of every class below the largest label: the
    preflight builds the losses, so such a gap stops the run before it trains.)"""
    train_labels = set(splits["train"][1])
    num_classes = max(max(labels) for _, labels in splits.values()) + 1
    only = sorted({y for s, (_, ys) in splits.items() if s != "train" for y in ys} - train_labels)
    if only or num_classes > MAX_CLASSES:
        detail = (
            f"labels {_ranges(only)} are in val/test but have no training image"
            if only
            else f"the largest label is {num_classes - 1}, over {MAX_CLASSES:,} classes"
        )
        raise DataError(
            f"split files in {where}: {detail} (labels are class ids 0..C-1; train has {len(train_labels)} distinct "
            "labels)"
        )
    for split, (paths, _) in splits.items():
        for p in paths:
            if Path(p).is_absolute() or os.path.normpath(p).split(os.sep)[0] == "..":
                raise DataError(
                    f"{split} split in {where}: path {p!r} leaves data.root (paths are relative to it, without '..')"
                )
    return num_classes


def read_inat_json(path: str | os.PathLike) -> tuple[list[str], list[int], dict[int, str]]:
    """Parse an official iNaturalist 2018 json: (file names, original category ids, id -> name)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
        by_image = {a["image_id"]: a["category_id"] for a in doc["annotations"]}
        files = [im["file_name"] for im in doc["images"]]
        labels = [int(by_image[im["id"]]) for im in doc["images"]]
        names = {int(c["id"]): c["name"] for c in doc.get("categories", [])}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path}: not an iNaturalist 2018 annotation file ({type(e).__name__}: {e})") from None
    return files, labels, names


def read_classnames(path: str | os.PathLike, num_classes: int) -> list[str]:
    path = resolve(path)
    if not path.is_file():
        raise DataError(f"data.classnames_file {path} does not exist")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(names) != num_classes:
        raise DataError(
            f"data.classnames_file {path} has {len(names)} names; the dataset has {num_classes} "
            "classes (one name per line, in label order)"
        )
    return names


def _names_from_paths(paths: Sequence[str], labels: Sequence[int], num_classes: int) -> list[str]:
    """Class names from the folder each class's first training image lies in (`train/airfield/x.jpg`)."""
    names = [f"class {c}" for c in range(num_classes)]
    seen = set()
    for p, y in zip(paths, labels):
        if y not in seen:
            seen.add(y)
            names[y] = Path(p).parent.name.replace("_", " ")
    return names


def build_oltr(cfg: DataConfig) -> LTData:
    """Places-LT / ImageNet-LT / iNaturalist 2018 from OLTR split files (or iNat's official json)."""
    split_dir, root = resolve(cfg.split_dir), resolve(cfg.root)
    json_names: dict[int, str] = {}
    if (
        cfg.name == "inat2018"
        and not (split_dir / OLTR_SPLIT_FILES["inat2018"]["train"]).is_file()
        and (split_dir / INAT_JSON_FILES["train"]).is_file()
    ):
        splits = {}
        for split, fname in INAT_JSON_FILES.items():
            files, labels, json_names = read_inat_json(split_dir / fname)
            splits[split] = (files, labels)
    else:
        splits = {split: read_split_file(split_dir / fname) for split, fname in OLTR_SPLIT_FILES[cfg.name].items()}
    num_classes = check_splits(splits, split_dir)
    train_paths, train_labels = splits["train"]
    first = root / train_paths[0]
    if not first.is_file():
        raise DataError(
            f"{first} does not exist: data.root ({root}) must be the folder the split-file paths "
            f"are relative to (the first train line is {train_paths[0]!r})"
        )
    if cfg.classnames_file:
        classnames = read_classnames(cfg.classnames_file, num_classes)
    elif json_names:
        classnames = [json_names.get(c, f"class {c}") for c in range(num_classes)]
    else:
        classnames = _names_from_paths(train_paths, train_labels, num_classes)
    datasets = {s: FileListDataset(root, p, y) for s, (p, y) in splits.items()}
    test = datasets["test"]
    return LTData(
        name=cfg.name,
        classnames=classnames,
        train=datasets["train"],
        val=datasets.get("val"),
        test=test.subset(cap_per_class(test.targets, cfg.max_test_per_class)),
        config=cfg,
    )


# ----------------------------------------------------------------------------------- the files a run reads
#: the first bytes of the image formats PIL reads for the paper-scale datasets
IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")


def is_image_file(path: str | os.PathLike) -> bool:
    """Whether the file starts like a JPEG, PNG, GIF, BMP, TIFF or WebP image (a header read, not a decode)."""
    with open(path, "rb") as f:
        head = f.read(12)
    return head.startswith(IMAGE_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def check_images(files: Mapping[str, Path]) -> None:
    """Raise DataError naming the listed files that are not images, before a loader meets one mid-epoch."""
    bad = [name for name, path in files.items() if not is_image_file(path)]
    if bad:
        shown = ", ".join(map(repr, bad[:3])) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise DataError(
            f"{len(bad)} file(s) listed in the split files are not images (JPEG, PNG, GIF, BMP, TIFF, WebP): {shown}; "
            "remove them from the split files or replace them"
        )


def data_files(cfg: DataConfig) -> dict[str, Path]:
    """Every file the dataset `cfg` names, read by `build_data` (and its images, read by the loaders), by a name
    that does not depend on where the data lie (the file's name, an image's path relative to data.root, a split
    file as `split_dir/<name>`): what the pipeline's `preflight` stage digests, so a file changed in place makes
    the stages that read it stale, and the same data elsewhere give the same signature."""
    extra = {"classnames_file": resolve(cfg.classnames_file)} if cfg.classnames_file else {}
    if cfg.name == "fashion_mnist_lt":
        return {p.name: p for p in find_fashion_mnist(cfg.root).values()} | extra
    if cfg.name == "cifar100_lt":
        root = resolve(cfg.root) if cfg.root else Path("~/.cache/lptlib").expanduser()
        return {f"cifar-100-python/{n}": root / "cifar-100-python" / n for n in ("train", "test", "meta")} | extra
    split_dir, root = resolve(cfg.split_dir), resolve(cfg.root)
    names = list(OLTR_SPLIT_FILES[cfg.name].values())
    inat_json = (
        cfg.name == "inat2018"
        and not (split_dir / names[0]).is_file()
        and (split_dir / INAT_JSON_FILES["train"]).is_file()
    )
    lists = list(INAT_JSON_FILES.values()) if inat_json else names
    read = (lambda p: read_inat_json(p)[0]) if inat_json else (lambda p: read_split_file(p)[0])
    images = {f: root / f for name in lists for f in read(split_dir / name)}
    return {f"split_dir/{n}": split_dir / n for n in lists} | extra | images


# ----------------------------------------------------------------------------------- dispatch
def build_data(cfg: DataConfig, seed: int = 0) -> LTData:
    """The benchmark named by `cfg.name`, without transforms (see `lptlib.data.transforms`). The split seed is
    `cfg.split_seed`, or the run's `seed` when that is null (each seed draws its own long-tailed train set and val
    split; the published splits of paper-scale data sets never change)."""
    split_seed = seed if cfg.split_seed is None else cfg.split_seed
    if cfg.name == "fashion_mnist_lt":
        data = build_fashion_mnist_lt(cfg, split_seed)
    elif cfg.name == "cifar100_lt":
        data = build_cifar100_lt(cfg, split_seed)
    else:
        data = build_oltr(cfg)
    if cfg.classnames_file and cfg.name in ("fashion_mnist_lt", "cifar100_lt"):
        data.classnames = read_classnames(cfg.classnames_file, data.num_classes)
    return data
