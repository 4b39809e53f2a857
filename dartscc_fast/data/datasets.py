"""Data sets for the search and its evaluation: Fashion-MNIST and CIFAR-10.

Fashion-MNIST is read from the official IDX files (gzip or raw, whatever count the
header gives). The package ships a real subset, the first 6,226 images of the
official training split (``dartscc_fast/data/fashion-mnist``, MIT licence, Zalando
SE), so the default run, the tests and CI need no network. The directory is chosen
by the ``root`` argument (a CLI flag passes it), else the ``DARTSCC_FMNIST_DIR``
environment variable, else the shipped subset. :func:`download_fashion_mnist` is an
opt-in download of the full set that checks the official MD5 sums; nothing in the
package calls it.

CIFAR-10 is read from its standard python batches (``cifar-10-batches-py``).

Every run splits the images it loads into train / validation / test with a fixed,
seeded permutation (:func:`split_dataset`); the :class:`Split` record prints as e.g.
``train 4358 / val 934 / test 934 of 6226 shipped Fashion-MNIST images, seed 0`` and
belongs next to every accuracy reported.
"""
from __future__ import annotations

import gzip
import hashlib
import math
import os
import pickle
import struct
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

__all__ = [
    "DatasetError", "IdxError", "ChecksumError",
    "ImageSet", "Split", "Loaders",
    "read_idx", "load_fashion_mnist", "fashion_mnist_root", "download_fashion_mnist",
    "file_digest", "verify_file", "verify_shipped_fashion_mnist",
    "load_cifar10", "check_fractions", "split_dataset", "make_loaders",
    "FMNIST_ENV", "CIFAR10_ENV", "FMNIST_CLASSES", "CIFAR10_CLASSES",
    "FMNIST_MD5", "FMNIST_MIRRORS", "SHIPPED_FMNIST_SHA256", "SHIPPED_FMNIST_COUNT",
]

PathLike = Union[str, "os.PathLike[str]"]

FMNIST_ENV = "DARTSCC_FMNIST_DIR"
CIFAR10_ENV = "DARTSCC_CIFAR10_DIR"

FMNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                  "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")

# Official file names per split: (images, labels), without the ".gz".
FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# MD5 sums of the full official files, as published in the "Get the Data" table of
# https://github.com/zalandoresearch/fashion-mnist/blob/master/README.md
FMNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}

# The official host (download links of the official README), then the official
# repository's copy under data/fashion. Either way the MD5 above is checked.
FMNIST_MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)

# The subset the package ships (first 6,226 official training images).
SHIPPED_FMNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": "538b5578ea7defb57050a6d519e02ecfc40f24b22606d2ac91c6d433590bcb1b",
    "train-labels-idx1-ubyte.gz": "4a8dfc021b753acc0db6c032758bb7374a2a62f183ddf7e1328fac675409c5c4",
}
SHIPPED_FMNIST_COUNT = 6226

_GZIP_MAGIC = b"\x1f\x8b"

# IDX type codes -> big-endian numpy dtypes.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_KINDS = {2051: "Fashion-MNIST/MNIST images", 2049: "Fashion-MNIST/MNIST labels"}


class DatasetError(ValueError):
    """A data file exists but its content is wrong (corrupt, truncated, mismatched)."""


class IdxError(DatasetError):
    """An IDX file is malformed: bad magic, truncated, trailing bytes, unknown dtype."""


class ChecksumError(DatasetError):
    """A file's digest differs from the expected one."""


# ----------------------------------------------------------------------------- IDX


def _describe_magic(magic: int) -> str:
    kind = _IDX_KINDS.get(magic)
    return "%d (%s)" % (magic, kind) if kind else "%d (0x%08x)" % (magic, magic)


def _read_bytes(path: Path) -> bytes:
    """The file's content, gunzipped when it starts with the gzip magic bytes."""
    raw = path.read_bytes()
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise IdxError("%s: truncated or corrupt gzip stream (%s: %s)"
                       % (path, type(exc).__name__, exc)) from exc


def read_idx(path: PathLike, expected_magic: Optional[int] = None) -> np.ndarray:
    """Read one IDX file (the MNIST / Fashion-MNIST format) into a numpy array.

    The file may be gzip-compressed or raw: gzip is recognised by its magic bytes,
    not by the file name. The shape comes from the header (so any record count
    works: the shipped 6,226-image subset, the full 60,000 / 10,000 files, or a
    hand-made file of 10). The result has native byte order and owns its memory.

    Args:
        path: the file.
        expected_magic: if given, the 4-byte magic number the file must have,
            e.g. 2051 for an image file or 2049 for a label file.

    Raises:
        FileNotFoundError: the file does not exist.
        IdxError: (a ``ValueError``) naming the file and the problem: bad magic,
            unsupported dtype code, a header or data shorter than the header
            promises (truncated), bytes after the data (trailing garbage), or a
            corrupt gzip stream.
    """
    path = Path(path)
    buf = _read_bytes(path)
    if len(buf) < 4:
        raise IdxError("%s: truncated: %d bytes, shorter than the 4-byte IDX magic number"
                       % (path, len(buf)))
    magic = int.from_bytes(buf[:4], "big")
    code, ndim = buf[2], buf[3]
    if buf[0] != 0 or buf[1] != 0 or ndim == 0:
        raise IdxError("%s: bad magic number 0x%08x: not an IDX file (an IDX file starts with "
                       "two zero bytes, a dtype code and the number of dimensions, e.g. 2051 "
                       "for images, 2049 for labels)" % (path, magic))
    if code not in _IDX_DTYPES:
        raise IdxError("%s: unsupported IDX dtype code 0x%02x (magic %d); supported codes: %s"
                       % (path, code, magic, ", ".join("0x%02x" % c for c in _IDX_DTYPES)))
    if expected_magic is not None and magic != expected_magic:
        raise IdxError("%s: magic number %s where %s was expected"
                       % (path, _describe_magic(magic), _describe_magic(expected_magic)))
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise IdxError("%s: truncated header: %d dimensions need %d header bytes, the file has %d"
                       % (path, ndim, header, len(buf)))
    dims = struct.unpack(">%dI" % ndim, buf[4:header])
    dtype = _IDX_DTYPES[code]
    want = math.prod(dims) * dtype.itemsize
    have = len(buf) - header
    shape = " x ".join(str(d) for d in dims)
    if have < want:
        raise IdxError("%s: truncated: the header promises %s %s values (%d bytes of data), "
                       "the file has %d bytes of data (%d missing)"
                       % (path, shape, dtype.name, want, have, want - have))
    if have > want:
        raise IdxError("%s: trailing garbage: %d bytes after the %d bytes of data the header "
                       "(%s %s values) promises" % (path, have - want, want, shape, dtype.name))
    arr = np.frombuffer(buf, dtype=dtype, count=math.prod(dims), offset=header)
    return arr.reshape(dims).astype(dtype.newbyteorder("="), copy=True)


# ----------------------------------------------------------------------- records


@dataclass(frozen=True, eq=False)
class ImageSet:
    """Images and labels of one data set split, with where they came from.

    ``images`` is uint8, [N, 28, 28] for Fashion-MNIST and [N, 3, 32, 32] for
    CIFAR-10; ``labels`` is int64 [N]. Unpacks as ``images, labels = data``.
    """

    images: torch.Tensor
    labels: torch.Tensor
    name: str
    split: str
    root: Path
    description: str
    files: Tuple[Path, ...] = ()

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter((self.images, self.labels))

    def class_counts(self, num_classes: int = 10) -> List[int]:
        """Number of images per class, classes 0..num_classes-1."""
        return torch.bincount(self.labels, minlength=num_classes).tolist()

    def __repr__(self) -> str:
        return "ImageSet(%s %s: %d images %s, from %s)" % (
            self.name, self.split, len(self), tuple(self.images.shape[1:]), self.root)


# ------------------------------------------------------------------ Fashion-MNIST


def _shipped_fmnist_dir() -> Path:
    try:
        ref = resources.files("dartscc_fast").joinpath("data", "fashion-mnist")
        path = Path(str(ref))
        if path.is_dir():
            return path
    except (ModuleNotFoundError, TypeError, AttributeError):  # pragma: no cover
        pass
    return Path(__file__).resolve().parent / "fashion-mnist"  # pragma: no cover


def fashion_mnist_root(root: Optional[PathLike] = None) -> Tuple[Path, str]:
    """Resolve the Fashion-MNIST directory: ``root``, else ``$DARTSCC_FMNIST_DIR``, else shipped.

    Returns ``(directory, how)`` where ``how`` is ``"argument"``, ``"env"`` or
    ``"shipped"``. A directory named by the argument or the environment variable
    must exist: there is no silent fall-back to the shipped subset.
    """
    if root is not None and str(root) != "":
        path, how = Path(root).expanduser(), "argument"
    elif os.environ.get(FMNIST_ENV):
        path, how = Path(os.environ[FMNIST_ENV]).expanduser(), "env"
    else:
        return _shipped_fmnist_dir(), "shipped"
    if not path.is_dir():
        where = "the root argument" if how == "argument" else "$%s" % FMNIST_ENV
        raise FileNotFoundError("Fashion-MNIST directory %s (from %s) does not exist"
                                % (path, where))
    return path, how


def _find_idx(root: Path, stem: str) -> Optional[Path]:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    return None


def load_fashion_mnist(root: Optional[PathLike] = None, split: str = "train") -> ImageSet:
    """Load Fashion-MNIST images and labels from the official IDX files.

    Args:
        root: directory holding ``train-images-idx3-ubyte[.gz]`` and
            ``train-labels-idx1-ubyte[.gz]`` (and ``t10k-*`` for ``split="test"``).
            Default: ``$DARTSCC_FMNIST_DIR``, else the 6,226-image subset shipped
            with the package (training files only).
        split: ``"train"`` (official training files) or ``"test"`` (official t10k
            files). This is the official file split, not the seeded
            train/val/test split of :func:`split_dataset`.

    Returns:
        An :class:`ImageSet` with uint8 images [N, 28, 28] and int64 labels [N].

    Raises:
        FileNotFoundError: the directory or a file is missing.
        IdxError: a file is malformed, or holds images where labels belong.
        DatasetError: the two files disagree on the count, the images are not
            28 x 28, or a label is outside 0..9.
    """
    if split not in FMNIST_FILES:
        raise ValueError("split must be 'train' or 'test', not %r" % (split,))
    path, how = fashion_mnist_root(root)
    img_stem, lbl_stem = FMNIST_FILES[split]
    img_file, lbl_file = _find_idx(path, img_stem), _find_idx(path, lbl_stem)
    if img_file is None or lbl_file is None:
        missing = [s for s, f in ((img_stem, img_file), (lbl_stem, lbl_file)) if f is None]
        msg = "Fashion-MNIST %s files not found in %s (%s): missing %s (looked for NAME.gz and NAME)" % (
            split, path, {"argument": "root argument", "env": "$" + FMNIST_ENV,
                          "shipped": "shipped subset"}[how], ", ".join(missing))
        if how == "shipped" and split == "test":
            msg += ("; the package ships only the first %d official training images: split them "
                    "with split_dataset(), or download the full set with download_fashion_mnist() "
                    "and point %s at it" % (SHIPPED_FMNIST_COUNT, FMNIST_ENV))
        raise FileNotFoundError(msg)

    images = read_idx(img_file, expected_magic=2051)
    labels = read_idx(lbl_file, expected_magic=2049)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DatasetError("%s: images of shape %s, Fashion-MNIST images are 28 x 28"
                           % (img_file, tuple(images.shape[1:])))
    if images.shape[0] != labels.shape[0]:
        raise DatasetError("Fashion-MNIST count mismatch: %s holds %d images but %s holds %d labels"
                           % (img_file, images.shape[0], lbl_file, labels.shape[0]))
    if labels.size and int(labels.max()) > 9:
        bad = int(np.flatnonzero(labels > 9)[0])
        raise DatasetError("%s: label %d at index %d is outside 0..9"
                           % (lbl_file, int(labels[bad]), bad))

    if how == "shipped":
        desc = "shipped Fashion-MNIST images"
    else:
        desc = "Fashion-MNIST %s images from %s" % ("training" if split == "train" else "t10k", path)
    return ImageSet(images=torch.from_numpy(images),
                    labels=torch.from_numpy(labels.astype(np.int64)),
                    name="Fashion-MNIST", split=split, root=path, description=desc,
                    files=(img_file, lbl_file))


# --------------------------------------------------------------------- checksums


def file_digest(path: PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes (``"sha256"`` or ``"md5"``, any hashlib name)."""
    h = hashlib.new(algorithm, usedforsecurity=False) if algorithm == "md5" else hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_file(path: PathLike, *, md5: Optional[str] = None, sha256: Optional[str] = None) -> None:
    """Check a file against an expected MD5 and/or SHA-256.

    Raises:
        FileNotFoundError: the file does not exist.
        ChecksumError: a digest differs (the message names the file, both digests).
        ValueError: neither digest was given.
    """
    if md5 is None and sha256 is None:
        raise ValueError("verify_file needs an expected md5 or sha256")
    for algorithm, expected in (("md5", md5), ("sha256", sha256)):
        if expected is None:
            continue
        got = file_digest(path, algorithm)
        if got != expected.lower():
            raise ChecksumError("%s: %s %s, expected %s" % (path, algorithm, got, expected.lower()))


def verify_shipped_fashion_mnist() -> Path:
    """Check the shipped subset against its recorded SHA-256 sums; returns its directory."""
    root = _shipped_fmnist_dir()
    for name, digest in SHIPPED_FMNIST_SHA256.items():
        verify_file(root / name, sha256=digest)
    return root


def download_fashion_mnist(root: PathLike, mirrors: Sequence[str] = FMNIST_MIRRORS,
                           timeout: float = 60.0, verbose: bool = True) -> Path:
    """Opt-in download of the full official Fashion-MNIST (4 files) into ``root``.

    Each file is fetched from the first mirror that answers (the official host,
    then the official GitHub repository), written to a temporary file, checked
    against the MD5 published in the official README (:data:`FMNIST_MD5`) and
    only then moved into place. A file already present with the right MD5 is
    kept; one with a wrong MD5 is never overwritten (delete it yourself). Nothing
    in the package, its tests or CI calls this: the shipped subset needs no network.

    Use the result with ``load_fashion_mnist(root)`` or ``DARTSCC_FMNIST_DIR=root``.

    Raises:
        ChecksumError: an existing file, or every download of a file, has the wrong MD5.
        ConnectionError: a file could not be fetched from any mirror (offline?).
    """
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    for name, md5 in FMNIST_MD5.items():
        dest = root / name
        if dest.exists():
            try:
                verify_file(dest, md5=md5)
            except ChecksumError as exc:
                raise ChecksumError("%s; refusing to overwrite it: delete it and download again"
                                    % exc) from None
            if verbose:
                print("fashion-mnist: %s present, md5 ok" % dest, flush=True)
            continue
        _fetch_first(name, md5, dest, mirrors, timeout, verbose)
    return root


def _fetch_first(name: str, md5: str, dest: Path, mirrors: Sequence[str], timeout: float, verbose: bool) -> None:
    """``name`` from the first mirror that gives it with the right MD5, into ``dest`` (atomically)."""
    root = dest.parent
    errors: List[str] = []
    bad_checksum = False
    for base in mirrors:
        url = base.rstrip("/") + "/" + name
        fd, tmp = tempfile.mkstemp(prefix=name + ".", suffix=".part", dir=root)
        try:
            h = hashlib.md5(usedforsecurity=False)
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                for block in iter(lambda: resp.read(1 << 20), b""):
                    h.update(block)
                    out.write(block)
            if h.hexdigest() != md5:
                bad_checksum = True
                errors.append("%s: md5 %s, expected %s" % (url, h.hexdigest(), md5))
                continue
            os.replace(tmp, dest)
            if verbose:
                print("fashion-mnist: %s <- %s, md5 ok" % (dest, url), flush=True)
            break
        except (urllib.error.URLError, OSError) as exc:
            errors.append("%s: %s" % (url, exc))
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    else:
        detail = "; ".join(errors)
        if bad_checksum:
            raise ChecksumError("could not get %s with the official md5 %s: %s"
                                % (name, md5, detail))
        raise ConnectionError("could not download %s (no internet access?): %s. Without a "
                              "network, use the shipped %d-image subset (the default), or copy "
                              "the four official files into %s by hand"
                              % (name, detail, SHIPPED_FMNIST_COUNT, root))


# ------------------------------------------------------------------------ CIFAR-10

_CIFAR_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, dicts, lists and scalars only, never arbitrary callables."""

    def find_class(self, module: str, name: str):  # noqa: D401
        if (module, name) in _CIFAR_PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError("global %s.%s is not allowed in a CIFAR-10 batch"
                                     % (module, name))


def _cifar_batch(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            d = _CifarUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise
    except Exception as exc:  # pickle raises many types on corrupt input
        raise DatasetError("%s: not a readable CIFAR-10 python batch (%s: %s)"
                           % (path, type(exc).__name__, exc)) from exc
    if not isinstance(d, dict):
        raise DatasetError("%s: a CIFAR-10 batch is a pickled dict, found %s" % (path, type(d).__name__))
    data = d.get(b"data", d.get("data"))
    labels = d.get(b"labels", d.get("labels"))
    if data is None or labels is None:
        raise DatasetError("%s: a CIFAR-10 batch needs b'data' and b'labels', found keys %s"
                           % (path, sorted(map(repr, d))))
    data = np.asarray(data)
    labels = np.asarray(labels)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DatasetError("%s: b'data' must be uint8 [N, 3072], found %s %s"
                           % (path, data.dtype, tuple(data.shape)))
    if labels.ndim != 1 or labels.shape[0] != data.shape[0]:
        raise DatasetError("%s: %d images but %s labels" % (path, data.shape[0], tuple(labels.shape)))
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) > 9):
        raise DatasetError("%s: labels outside 0..9 (min %d, max %d)"
                           % (path, int(labels.min()), int(labels.max())))
    return data, labels.astype(np.int64)


def load_cifar10(root: Optional[PathLike] = None, split: str = "train") -> ImageSet:
    """Load CIFAR-10 from the standard python batches.

    Args:
        root: the extracted ``cifar-10-batches-py`` directory, or a directory that
            contains it. Default: ``$DARTSCC_CIFAR10_DIR``. (CIFAR-10 is not shipped.)
        split: ``"train"`` (``data_batch_1`` .. ``data_batch_5``) or ``"test"``
            (``test_batch``).

    Each batch is a pickled dict with ``b'data'`` (uint8 [N, 3072], channel-major
    rows) and ``b'labels'``; only numpy arrays and plain containers are unpickled.

    Returns:
        An :class:`ImageSet` with uint8 images [N, 3, 32, 32] and int64 labels [N].

    Raises:
        FileNotFoundError: no root given, or the directory or a batch is missing.
        DatasetError: a batch is corrupt or has the wrong content.
    """
    if split not in ("train", "test"):
        raise ValueError("split must be 'train' or 'test', not %r" % (split,))
    if root is None or str(root) == "":
        if not os.environ.get(CIFAR10_ENV):
            raise FileNotFoundError("CIFAR-10 is not shipped: pass root= (the extracted "
                                    "cifar-10-batches-py directory) or set $%s" % CIFAR10_ENV)
        root = os.environ[CIFAR10_ENV]
    path = Path(root).expanduser()
    if (path / "cifar-10-batches-py").is_dir():
        path = path / "cifar-10-batches-py"
    if not path.is_dir():
        raise FileNotFoundError("CIFAR-10 directory %s does not exist" % path)
    names = ["data_batch_%d" % i for i in range(1, 6)] if split == "train" else ["test_batch"]
    missing = [n for n in names if not (path / n).is_file()]
    if missing:
        raise FileNotFoundError("CIFAR-10 %s batches missing in %s: %s (extract cifar-10-python.tar.gz "
                                "from https://www.cs.toronto.edu/~kriz/cifar.html)"
                                % (split, path, ", ".join(missing)))
    parts = [_cifar_batch(path / n) for n in names]
    data = np.concatenate([p[0] for p in parts]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([p[1] for p in parts])
    desc = "CIFAR-10 %s images from %s" % ("training" if split == "train" else "test", path)
    return ImageSet(images=torch.from_numpy(np.ascontiguousarray(data)),
                    labels=torch.from_numpy(labels), name="CIFAR-10", split=split, root=path,
                    description=desc, files=tuple(path / n for n in names))


# -------------------------------------------------------------------------- splits


@dataclass(frozen=True, eq=False)
class Split:
    """A fixed, seeded train / validation / test split of ``n`` images.

    ``train``, ``val`` and ``test`` are disjoint int64 index tensors that together
    cover ``range(n)``. ``str(split)`` is the line to report with every accuracy,
    e.g. ``train 4358 / val 934 / test 934 of 6226 shipped Fashion-MNIST images, seed 0``.
    ``mean`` / ``std`` are the per-channel normalisation statistics of the train
    part when :func:`make_loaders` normalised the images, else ``None``.
    """

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    n: int
    seed: int
    fractions: Tuple[float, float, float]
    description: str = "images"
    mean: Optional[Tuple[float, ...]] = None
    std: Optional[Tuple[float, ...]] = None

    @property
    def sizes(self) -> Tuple[int, int, int]:
        """(train, val, test) sizes."""
        return (int(self.train.numel()), int(self.val.numel()), int(self.test.numel()))

    @property
    def fingerprint(self) -> str:
        """First 12 hex digits of the SHA-256 of the three index lists: equal iff same split."""
        h = hashlib.sha256()
        for part in (self.train, self.val, self.test):
            h.update(part.to(torch.int64).numpy().tobytes())
            h.update(b"|")
        return h.hexdigest()[:12]

    def as_dict(self) -> Dict[str, object]:
        """JSON-friendly summary (sizes, seed, fractions, description, fingerprint, stats)."""
        tr, va, te = self.sizes
        return {"train": tr, "val": va, "test": te, "n": self.n, "seed": self.seed,
                "fractions": list(self.fractions), "description": self.description,
                "fingerprint": self.fingerprint, "mean": self.mean, "std": self.std,
                "text": str(self)}

    def __str__(self) -> str:
        tr, va, te = self.sizes
        return "train %d / val %d / test %d of %d %s, seed %d" % (
            tr, va, te, self.n, self.description, self.seed)

    def __repr__(self) -> str:
        return "Split(%s)" % self


def _split_sizes(n: int, fractions: Sequence[float]) -> List[int]:
    """Largest-remainder rounding: non-negative sizes that sum to exactly n."""
    raw = [n * f for f in fractions]
    sizes = [int(math.floor(r)) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: -(raw[i] - sizes[i]))
    for i in order[: n - sum(sizes)]:
        sizes[i] += 1
    return sizes


def check_fractions(fractions: Sequence[float], name: str = "fractions") -> Tuple[float, float, float]:
    """``(train, val, test)`` fractions as floats; ValueError, naming ``name``, unless they are
    three finite numbers >= 0 summing to 1 (within 1e-6)."""
    fr = tuple(float(f) for f in fractions)
    if len(fr) != 3 or any(f < 0 or not math.isfinite(f) for f in fr) or abs(sum(fr) - 1.0) > 1e-6:
        raise ValueError("%s must be three fractions (train, val, test) >= 0 summing to 1, not %r"
                         % (name, tuple(fractions)))
    return fr  # type: ignore[return-value]


def split_dataset(n: int, fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0,
                  description: str = "images") -> Split:
    """A fixed, seeded train / validation / test split of ``range(n)``.

    The indices are a ``torch.randperm`` under a ``torch.Generator`` seeded with
    ``seed``, cut into parts of sizes ``n * fractions`` (largest-remainder
    rounding, so they sum to ``n``): the same ``n``, fractions and seed always give
    the same split. 6,226 images with the defaults give 4358 / 934 / 934.

    Args:
        n: number of images.
        fractions: (train, val, test) fractions, non-negative, summing to 1.
        seed: the generator seed; report it with the results.
        description: what the ``n`` items are, for ``str(split)``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError("n must be a non-negative int, not %r" % (n,))
    fr = check_fractions(fractions)
    n_train, n_val, n_test = _split_sizes(n, fr)
    gen = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=gen)
    return Split(train=perm[:n_train].clone(), val=perm[n_train:n_train + n_val].clone(),
                 test=perm[n_train + n_val:].clone(), n=n, seed=int(seed),
                 fractions=fr, description=description)  # type: ignore[arg-type]


# ------------------------------------------------------------------------- loaders


class Loaders(NamedTuple):
    """``train, val, test, split = make_loaders(...)``."""

    train: DataLoader
    val: DataLoader
    test: DataLoader
    split: Split


_NAMES = {"fmnist": "fmnist", "fashionmnist": "fmnist", "cifar10": "cifar10", "cifar": "cifar10"}


def make_loaders(name: str = "fmnist", root: Optional[PathLike] = None, batch_size: int = 64,
                 seed: int = 0, limit: Optional[int] = None, normalize: bool = True,
                 fractions: Sequence[float] = (0.7, 0.15, 0.15),
                 eval_batch_size: Optional[int] = None) -> Loaders:
    """Train / validation / test ``DataLoader``s over a fixed, seeded split.

    Loads the training images of ``name`` (``"fmnist"``: :func:`load_fashion_mnist`,
    by default the shipped subset; ``"cifar10"``: :func:`load_cifar10`), keeps the
    first ``limit`` (for tiny CI runs), splits them with :func:`split_dataset` and
    wraps each part in a ``TensorDataset`` of float images ([N, 1, 28, 28] or
    [N, 3, 32, 32], scaled to [0, 1], then normalised per channel with the mean and
    std of the train part when ``normalize``) and int64 labels. The train loader
    shuffles with a generator seeded by ``seed``, so the batch order is
    reproducible; val / test are not shuffled. Everything stays in memory,
    ``num_workers=0``.

    Returns:
        :class:`Loaders` ``(train, val, test, split)``; print ``split`` with
        every accuracy.
    """
    key = _NAMES.get(name.lower().replace("-", "").replace("_", ""))
    if key is None:
        raise ValueError("unknown data set %r: use 'fmnist' or 'cifar10'" % (name,))
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1, not %r" % (batch_size,))
    data = load_fashion_mnist(root, "train") if key == "fmnist" else load_cifar10(root, "train")
    images, labels, desc = data.images, data.labels, data.description
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError("limit must be a positive int, not %r" % (limit,))
        if limit < len(data):
            images, labels = images[:limit], labels[:limit]
            desc = "images (the first %d of %d %s)" % (limit, len(data), desc)
    x = images.to(torch.float32).div_(255.0)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    split = split_dataset(int(labels.shape[0]), fractions, seed, desc)
    if split.sizes[0] == 0:
        raise ValueError("the train part of %s is empty" % split)
    if normalize:
        xt = x[split.train]
        mean = xt.mean(dim=(0, 2, 3))
        std = xt.std(dim=(0, 2, 3), unbiased=False).clamp_min(1e-6)
        x = (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
        split = Split(train=split.train, val=split.val, test=split.test, n=split.n,
                      seed=split.seed, fractions=split.fractions, description=split.description,
                      mean=tuple(round(float(m), 6) for m in mean),
                      std=tuple(round(float(s), 6) for s in std))
    ebs = eval_batch_size or batch_size

    def part(idx: torch.Tensor) -> TensorDataset:
        return TensorDataset(x[idx], labels[idx])

    gen = torch.Generator().manual_seed(int(seed))
    train = DataLoader(part(split.train), batch_size=batch_size, shuffle=True, generator=gen)
    val = DataLoader(part(split.val), batch_size=ebs, shuffle=False)
    test = DataLoader(part(split.test), batch_size=ebs, shuffle=False)
    return Loaders(train, val, test, split)
