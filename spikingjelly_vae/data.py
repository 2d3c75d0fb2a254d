"""Datasets: MNIST, Fashion-MNIST, CIFAR-10 and CelebA as `(image in [-1, 1], label)` pairs.

Preprocessing follows the official code (ESVAE paper Sec. IV-A): images go through
`ToTensor()` and then `x -> 2x - 1`; MNIST and Fashion-MNIST are resized to 32x32; CelebA is
`CenterCrop(148)` then resized to 64x64; training sets of CIFAR-10 and CelebA get a random
horizontal flip.

Where the files are looked for (under the data root: ``root`` argument, else env ``SJVAE_DATA``,
else ``./data``):

- mnist-mini: nothing; the first 10,000 training and 2,000 test images of MNIST ship inside the package
  (``embedded/mnist_mini.npz``, its source and licence in ``embedded/README.md``), so first runs need no
  data folder and no network. Chosen by name only: it never stands in for ``mnist``.
- mnist:   ``MNIST/raw/`` (torchvision layout, idx files)
- fashion: ``FashionMNIST/raw/`` (torchvision layout)
- cifar10: ``cifar-10-batches-py/`` (torchvision python batches), else an image-folder tree
  ``CIFAR-10-images/{train,test}/<class>/*.jpg`` (or ``cifar10/{train,test}/...``), else the tarball
  ``CIFAR-10-images.tar.gz`` (at the root or in ``cifar10_jpeg_q75/``), extracted once into the cache
  folder (``cache_dir`` argument, else env ``SJVAE_CACHE``, else ``~/.cache/spikingjelly_vae``) and
  reused from there. Nothing is ever written under the data root.
- celeba:  torchvision layout ``celeba/img_align_celeba`` + ``celeba/list_eval_partition.txt``, else a
  flat folder of aligned JPEGs (``celeba/img_align_celeba``, ``celeba_sample/img_align_celeba`` or
  ``img_align_celeba``). In a flat folder, files named by their CelebA id (``000001.jpg``) are split
  with the official partition (train <= 162770 < valid <= 182637 < test); other names all count as
  train. Split ``all`` takes every image. CelebA has no class label: the label is always 0.
"""
from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import warnings
from functools import partial
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import datasets, transforms

from .dataspec import DATASETS, EMBEDDED, DatasetSpec, dataset_info, dataset_spec
from .schemas import error_reason

__all__ = ["DATASETS", "DatasetSpec", "dataset_spec", "dataset_info", "load_dataset", "resolve_data_root",
           "resolve_cache_dir", "to_unit_range", "to_signed_range"]


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_TARBALL = "CIFAR-10-images.tar.gz"
CELEBA_TRAIN_LAST, CELEBA_VALID_LAST = 162770, 182637  # official list_eval_partition boundaries
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
DOWNLOAD_HINT = ", or add --download to fetch it there (docs/download.md)"


def resolve_data_root(root=None) -> Path:
    """The data root: `root`, else env SJVAE_DATA, else ./data. It must be an existing folder."""
    root = Path(root or os.environ.get("SJVAE_DATA") or "data").expanduser()
    if not root.is_dir():
        raise ValueError(f"data root {str(root)!r} does not exist or is not a folder; "
                         f"pass --data-root (or set SJVAE_DATA) to the folder holding the datasets{DOWNLOAD_HINT}")
    return root


def resolve_cache_dir(cache_dir=None) -> Path:
    """The cache folder: `cache_dir`, else env SJVAE_CACHE, else ~/.cache/spikingjelly_vae."""
    return Path(cache_dir or os.environ.get("SJVAE_CACHE") or "~/.cache/spikingjelly_vae").expanduser()


def to_signed_range(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1]: x -> 2x - 1 (the official normalisation)."""
    return x * 2.0 - 1.0


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamped (for saving images)."""
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


def _transform(spec: DatasetSpec, augment: bool):
    steps = []
    if spec.crop is not None:
        steps += [transforms.CenterCrop(spec.crop)]
    if spec.resize:
        steps += [transforms.Resize((spec.image_size, spec.image_size))]
    if augment:
        steps += [transforms.RandomHorizontalFlip()]
    steps += [transforms.ToTensor(), transforms.Lambda(to_signed_range)]
    return transforms.Compose(steps)


def load_dataset(name: str, split: str = "train", root=None, cache_dir=None, *, augment=None,
                 download: bool = False) -> Dataset:
    """A Dataset of `(image [C, H, W] in [-1, 1], int label)`.

    split: `train` or `test` (CelebA also `valid` and `all`). augment: None gives the official choice
    (flip on CIFAR-10 / CelebA train), True/False forces it. download: first fetch what is missing into
    the data root (`download.download_dataset`, docs/download.md); never done otherwise.
    """
    spec = dataset_spec(name)
    if split not in spec.splits:
        raise ValueError(f"unknown split {split!r} for {name}; choose one of {', '.join(spec.splits)}")
    if augment is None:
        augment = split == "train" and spec.flip
    if name in EMBEDDED:  # inside the package: no data root, nothing to download
        return _embedded(name, split, _transform(spec, bool(augment)))
    if download:
        from .download import download_dataset
        download_dataset(name, root)
    root = resolve_data_root(root)
    tf = _transform(spec, bool(augment))
    if name in ("mnist", "fashion"):
        data = _mnist_like(name, split, root, tf)
    elif name == "cifar10":
        data = _cifar10(split, root, cache_dir, tf)
    else:
        data = _celeba(split, root, tf)
    return check_labels(data, spec, split, root)


def check_labels(data, spec: DatasetSpec, split: str, root) -> Dataset:
    """`data` if it has one label per image, each in 0..num_classes-1; ValueError (one line, before any
    training or evaluation) otherwise. Datasets that keep their labels in `targets` (torchvision's, an
    ImageFolder) are checked; the others make their labels themselves (class folders, CelebA's 0)."""
    targets = getattr(data, "targets", None)
    if targets is None:
        return data
    where = f"{spec.name} {split} under {str(root)!r}"
    images = len(data.data) if hasattr(data, "data") else len(data)
    labels = torch.as_tensor(targets)
    if labels.dim() != 1 or labels.numel() != images:
        raise ValueError(f"{where}: {images} images but {labels.numel()} labels; the label file does not belong to "
                         "the image file (replace both with the originals)")
    if images == 0:
        raise ValueError(f"{where}: the split holds no images")
    bad = ((labels < 0) | (labels >= spec.num_classes)).nonzero() if spec.num_classes else labels[:0]
    if bad.numel():
        i = int(bad[0])
        raise ValueError(f"{where}: label {int(labels[i])} of image {i} is outside 0..{spec.num_classes - 1} "
                         f"({bad.numel()} such labels); the label file is corrupt (replace it with the original)")
    return data


def _mnist_like(name, split, root, tf):
    cls, folder = (datasets.MNIST, "MNIST") if name == "mnist" else (datasets.FashionMNIST, "FashionMNIST")
    # torchvision's MNIST checks all four idx files even to read one split: require them all here
    needed = [root / folder / "raw" / f"{prefix}-{kind}-idx{d}-ubyte" for prefix in ("train", "t10k")
              for kind, d in (("images", 3), ("labels", 1))]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise ValueError(f"{name} not found under data root {str(root)!r}: missing {', '.join(missing)} "
                         f"(torchvision layout {folder}/raw/ with all four decompressed idx files){DOWNLOAD_HINT}")
    try:
        return cls(str(root), train=split == "train", transform=tf, download=False)
    except (AssertionError, RuntimeError, ValueError, IndexError, KeyError) as err:  # corrupt idx data
        raise ValueError(f"{name} {split} files under {str(root / folder / 'raw')!r} are corrupt or truncated "
                         f"({error_reason(err)}); replace them with the original idx files") from None


class ArrayImageDataset(Dataset):
    """uint8 images `[N, H, W]` and labels `[N]` (numpy) as `(transform(PIL image), int label)`, as
    torchvision's MNIST gives them."""

    def __init__(self, images, labels, transform=None):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        img = Image.fromarray(self.images[i])  # uint8 [H, W] -> mode "L"
        return (self.transform(img) if self.transform else img), int(self.labels[i])


def _embedded(name, split, tf):
    """The shipped subset `name` (EMBEDDED): `<split>_images` [N, 28, 28] uint8 and `<split>_labels`."""
    import numpy as np
    path = EMBEDDED[name]
    try:
        with np.load(path, allow_pickle=False) as z:
            images, labels = z[f"{split}_images"], z[f"{split}_labels"]
    except (OSError, KeyError, ValueError) as err:
        raise ValueError(f"the embedded dataset {name} ({path}) is missing or corrupt ({error_reason(err)}); "
                         "reinstall the package") from None
    return ArrayImageDataset(images, labels, tf)


def _is_image(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_SUFFIXES


def _image_folder(split_dir: Path, tf) -> datasets.ImageFolder:
    """torchvision's ImageFolder on `split_dir/<class>/*.jpg`, which must hold exactly the CIFAR-10 classes
    (so labels are their indices in CIFAR10_CLASSES)."""
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if tuple(classes) != CIFAR10_CLASSES:
        raise ValueError(f"CIFAR-10 image folder {str(split_dir)!r} must hold the 10 class folders "
                         f"{', '.join(CIFAR10_CLASSES)}; found {classes or 'none'}")
    try:
        return datasets.ImageFolder(str(split_dir), tf, is_valid_file=_is_image)
    except FileNotFoundError as err:  # a class folder without images
        raise ValueError(f"CIFAR-10 image folder {str(split_dir)!r} is incomplete: {err}") from None


class _OneFolder(datasets.ImageFolder):
    """torchvision's ImageFolder over the images of one folder, all of class 0; `keep(path)` picks them."""

    def __init__(self, folder: Path, transform, keep):
        self.folder_name = folder.name
        super().__init__(str(folder.parent), transform, is_valid_file=keep)

    def find_classes(self, directory):
        return [self.folder_name], {self.folder_name: 0}


def _cifar10(split, root, cache_dir, tf):
    if (root / "cifar-10-batches-py").is_dir():
        try:  # torchvision checks each file's md5 against the official one before unpickling it
            return datasets.CIFAR10(str(root), train=split == "train", transform=tf, download=False)
        except RuntimeError:
            raise ValueError(f"CIFAR-10 batches under {str(root / 'cifar-10-batches-py')!r} are missing, corrupt or "
                             "not the official files (md5 check failed); replace them with the files of "
                             f"cifar-10-python.tar.gz{DOWNLOAD_HINT}") from None
    for tree in (root / "CIFAR-10-images", root / "cifar10"):
        if (tree / split).is_dir():
            return _image_folder(tree / split, tf)
    tarball = next((p for p in (root / CIFAR10_TARBALL, root / "cifar10_jpeg_q75" / CIFAR10_TARBALL)
                    if p.is_file()), None)
    if tarball is None:
        raise ValueError(
            f"CIFAR-10 not found under data root {str(root)!r}: looked for cifar-10-batches-py/, "
            f"CIFAR-10-images/{split}/, cifar10/{split}/, {CIFAR10_TARBALL} and "
            f"cifar10_jpeg_q75/{CIFAR10_TARBALL}{DOWNLOAD_HINT}")
    tree = extract_tarball_once(tarball, resolve_cache_dir(cache_dir) / "cifar10", forbidden=root)
    return _image_folder(tree / "CIFAR-10-images" / split, tf)


def extract_tarball_once(tarball: Path, dest: Path, forbidden: Path | None = None) -> Path:
    """Extract `tarball` into `dest` unless a finished extraction of the same content is already there.

    The cache is keyed by the tarball's sha256 (computed once per name, size and mtime, and kept in
    `<dest>.source`). Extraction goes to a temp folder; the whole archive is read to its end (so a corrupt
    or truncated stream fails, instead of ending early at a bad header), the files on disk are counted
    against its members, and only then is the tree renamed into place with its `.complete` marker.
    A corrupt archive -> ValueError naming the file. `forbidden` (the data root) may not contain `dest`.
    """
    tarball, dest = Path(tarball), Path(dest)
    if forbidden is not None and dest.resolve().is_relative_to(Path(forbidden).resolve()):
        raise ValueError(f"cache folder {str(dest)!r} lies inside the data root {str(forbidden)!r}; "
                         "pass --cache-dir (or set SJVAE_CACHE) to a folder outside it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    stamp = f"sha256 {_tarball_sha256(tarball, dest.with_name(dest.name + '.source'))}\n"
    marker = dest / ".complete"
    if marker.is_file():
        saved = marker.read_text()
        if saved.startswith(stamp) and saved[len(stamp):] == _manifest(dest):
            return dest
        why = "another archive" if not saved.startswith(stamp) else "files changed, added or deleted since"
        warnings.warn(f"rebuilding the extraction cache {dest} from {tarball} ({why})", stacklevel=2)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".partial-", dir=dest.parent))
    try:
        _extract_checked(tarball, tmp)
        (tmp / ".complete").write_text(stamp + _manifest(tmp))
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _manifest(tree: Path) -> str:
    """One line per file of an extracted tree (but its marker): relative path, size and mtime, sorted, so
    a deleted, added, truncated or rewritten file shows as a different manifest."""
    lines = []
    for folder, _, names in os.walk(tree):
        for name in names:
            path = Path(folder) / name
            rel = path.relative_to(tree).as_posix()
            if rel != ".complete":
                st = path.stat()
                lines.append(f"{rel}\t{st.st_size}\t{st.st_mtime_ns}\n")
    return "".join(sorted(lines))


def _tarball_sha256(tarball: Path, record: Path) -> str:
    """sha256 of the tarball, reused from `record` while the file is the same one: same name, size, mtime,
    inode and ctime (a swapped file gets a new ctime even when its mtime is set back, so it is hashed again)."""
    from .atomic import atomic_write_text, sha256_file
    st = tarball.stat()
    key = f"{tarball.resolve()} {st.st_size} {st.st_mtime_ns} {st.st_ino} {st.st_ctime_ns}"
    if record.is_file():
        saved_key, _, digest = record.read_text().strip().rpartition(" ")
        if saved_key == key:
            return digest
    digest = sha256_file(tarball)
    atomic_write_text(record, f"{key} {digest}\n")
    return digest


def _extract_checked(tarball: Path, into: Path) -> None:
    """Extract `tarball` into `into` with tarfile's "data" filter (no absolute names, no escapes, no device
    files, no setuid bits); ValueError if it is corrupt or unsafe. Pythons without the filter get the hand
    checks: plain files and folders with relative names only."""
    import gzip
    import zlib
    try:
        with tarfile.open(tarball) as tf:
            members = tf.getmembers()
            if hasattr(tarfile, "data_filter"):
                tf.extractall(into, members=members, filter="data")
            else:  # Python < 3.10.12 / 3.11.4
                _check_members(tarball, members)
                tf.extractall(into, members=members)
            while tf.fileobj.read(1 << 20):  # to the end: the gzip CRC and length are checked there
                pass
    except getattr(tarfile, "FilterError", ()) as err:
        raise ValueError(f"refusing to extract {str(tarball)!r}: {err}") from None
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise ValueError(f"{str(tarball)!r} is corrupt or truncated ({error_reason(err)}); "
                         "download it again") from None
    files = sum(1 for m in members if m.isfile())
    on_disk = sum(1 for f in into.rglob("*") if f.is_file() and not f.is_symlink())
    if not files or on_disk != files:
        raise ValueError(f"{str(tarball)!r} is corrupt or incomplete: {on_disk} files extracted of {files} "
                         "members; download it again")


def _check_members(tarball: Path, members) -> None:
    for m in members:
        parts = Path(m.name).parts
        if not (m.isfile() or m.isdir()) or Path(m.name).is_absolute() or ".." in parts:
            raise ValueError(f"refusing to extract {str(tarball)!r}: unsafe member {m.name!r}")


class _NoLabel(Dataset):
    """Wraps torchvision's CelebA (target_type=[]) so that items are `(image, 0)`."""

    def __init__(self, base):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        return self.base[i][0], 0


def _celeba(split, root, tf):
    tv = root / "celeba"
    if (tv / "img_align_celeba").is_dir() and (tv / "list_eval_partition.txt").is_file():
        try:
            base = datasets.CelebA(str(root), split=split, target_type=[], transform=tf, download=False)
            return _NoLabel(base)
        except (RuntimeError, FileNotFoundError):
            pass  # incomplete torchvision layout: fall back to the flat folder below
    folders = (tv / "img_align_celeba", root / "celeba_sample" / "img_align_celeba", root / "img_align_celeba")
    folder = next((f for f in folders if f.is_dir()), None)
    if folder is None:
        raise ValueError(f"CelebA not found under data root {str(root)!r}: looked for "
                         + ", ".join(str(f.relative_to(root)) + "/" for f in folders) + DOWNLOAD_HINT)
    try:
        return _OneFolder(folder, tf, partial(_celeba_pick, split))
    except FileNotFoundError:
        images = sum(1 for f in folder.iterdir() if _is_image(f.name))
        raise ValueError(f"no CelebA {split} images in {str(folder)!r} ({images} images in all; "
                         "files named by CelebA id are split by the official partition); "
                         "use split 'all' or another split") from None


def _celeba_pick(split: str, path: str) -> bool:
    return _is_image(path) and (split == "all" or _celeba_split(Path(path).stem) == split)


def _celeba_split(stem: str) -> str:
    if not stem.isdigit():
        return "train"
    i = int(stem)
    return "train" if i <= CELEBA_TRAIN_LAST else "valid" if i <= CELEBA_VALID_LAST else "test"
