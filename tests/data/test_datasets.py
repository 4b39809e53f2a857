"""Tests for dartscc_fast.data.datasets: IDX reading, the shipped subset, splits, CIFAR-10.

No test touches the network: the download function is never called, only its
checksum verifier on local files.
"""
import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from dartscc_fast.data import datasets as ds
from dartscc_fast.data.datasets import ChecksumError, DatasetError, IdxError

SHIPPED_COUNTS = [578, 678, 628, 639, 600, 613, 617, 631, 618, 624]


def idx_bytes(arr, magic=None):
    """Serialise a uint8 array as IDX (magic 0x0000 08 ndim unless given)."""
    arr = np.asarray(arr, dtype=np.uint8)
    if magic is None:
        magic = 0x0800 | arr.ndim
    return struct.pack(">I", magic) + struct.pack(">%dI" % arr.ndim, *arr.shape) + arr.tobytes()


def write_fmnist(root, n_images=10, n_labels=None, gz=True, seed=0):
    """A small synthetic Fashion-MNIST training pair in root; returns (images, labels)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n_images, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=(n_labels if n_labels is not None else n_images,), dtype=np.uint8)
    root.mkdir(parents=True, exist_ok=True)
    for stem, arr in (("train-images-idx3-ubyte", images), ("train-labels-idx1-ubyte", labels)):
        data = idx_bytes(arr)
        if gz:
            (root / (stem + ".gz")).write_bytes(gzip.compress(data))
        else:
            (root / stem).write_bytes(data)
    return images, labels


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    monkeypatch.delenv(ds.FMNIST_ENV, raising=False)
    monkeypatch.delenv(ds.CIFAR10_ENV, raising=False)


@pytest.fixture(scope="module")
def shipped():
    return ds.load_fashion_mnist()


# ---------------------------------------------------------------- shipped subset


def test_shipped_subset_loads(shipped):
    assert len(shipped) == 6226
    assert shipped.images.shape == (6226, 28, 28) and shipped.images.dtype == torch.uint8
    assert shipped.labels.shape == (6226,) and shipped.labels.dtype == torch.int64
    assert shipped.class_counts() == SHIPPED_COUNTS
    assert shipped.description == "shipped Fashion-MNIST images"
    images, labels = shipped  # unpacks like a tuple
    assert images is shipped.images and labels is shipped.labels


def test_shipped_files_and_licence_are_in_the_package():
    root, how = ds.fashion_mnist_root()
    assert how == "shipped"
    assert (root / "train-images-idx3-ubyte.gz").is_file()
    assert (root / "train-labels-idx1-ubyte.gz").is_file()
    text = (root / "LICENSE.md").read_text(encoding="utf-8")
    assert "Copyright (c) 2017 Zalando SE" in text and "MIT" in text
    for digest in ds.SHIPPED_FMNIST_SHA256.values():
        assert digest in text


def test_shipped_test_split_has_a_clear_error():
    with pytest.raises(FileNotFoundError, match="ships only the first 6226"):
        ds.load_fashion_mnist(split="test")


# ------------------------------------------------------------------------- IDX


def test_raw_and_gz_read_the_same(tmp_path, shipped):
    src = ds.fashion_mnist_root()[0] / "train-labels-idx1-ubyte.gz"
    raw = tmp_path / "train-labels-idx1-ubyte"
    raw.write_bytes(gzip.decompress(src.read_bytes()))
    a, b = ds.read_idx(src), ds.read_idx(raw)
    assert a.dtype == np.uint8 and a.shape == (6226,)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, shipped.labels.numpy())
    # gzip is sniffed from the magic bytes, not the name
    misnamed = tmp_path / "raw-but-called.gz"
    misnamed.write_bytes(raw.read_bytes())
    np.testing.assert_array_equal(ds.read_idx(misnamed), a)
    gz_no_suffix = tmp_path / "gz-without-suffix"
    gz_no_suffix.write_bytes(src.read_bytes())
    np.testing.assert_array_equal(ds.read_idx(gz_no_suffix), a)


@pytest.mark.parametrize("gz", [True, False])
def test_count_comes_from_the_header(tmp_path, gz):
    images, labels = write_fmnist(tmp_path, n_images=10, gz=gz)
    data = ds.load_fashion_mnist(tmp_path)
    assert len(data) == 10 and data.images.shape == (10, 28, 28)
    np.testing.assert_array_equal(data.images.numpy(), images)
    np.testing.assert_array_equal(data.labels.numpy(), labels.astype(np.int64))
    assert str(tmp_path) in data.description


def test_other_idx_dtypes(tmp_path):
    arr = np.arange(-6, 6, dtype=">i4").reshape(3, 4)
    p = tmp_path / "ints"
    p.write_bytes(struct.pack(">I", 0x0C02) + struct.pack(">2I", 3, 4) + arr.tobytes())
    out = ds.read_idx(p)
    assert out.dtype == np.int32 and out.dtype.isnative
    np.testing.assert_array_equal(out, arr)


@pytest.mark.parametrize("gz", [True, False])
def test_truncated_file_names_the_file(tmp_path, gz):
    data = idx_bytes(np.zeros((10, 28, 28), np.uint8))[:-100]
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(IdxError, match="truncated") as err:
        ds.read_idx(p)
    assert str(p) in str(err.value) and "100 missing" in str(err.value)
    assert isinstance(err.value, ValueError)


def test_truncated_gzip_stream_and_header(tmp_path):
    p = tmp_path / "cut.gz"
    p.write_bytes(gzip.compress(idx_bytes(np.zeros((10, 28, 28), np.uint8)))[:50])
    with pytest.raises(IdxError, match="gzip") as err:
        ds.read_idx(p)
    assert str(p) in str(err.value)
    q = tmp_path / "header"
    q.write_bytes(struct.pack(">II", 2051, 10))  # 3 dims promised, 1 given
    with pytest.raises(IdxError, match="truncated header"):
        ds.read_idx(q)
    r = tmp_path / "tiny"
    r.write_bytes(b"\x00\x00")
    with pytest.raises(IdxError, match="truncated"):
        ds.read_idx(r)


def test_trailing_garbage(tmp_path):
    p = tmp_path / "labels"
    p.write_bytes(idx_bytes(np.arange(10, dtype=np.uint8)) + b"junk")
    with pytest.raises(IdxError, match="trailing garbage: 4 bytes") as err:
        ds.read_idx(p)
    assert str(p) in str(err.value)


def test_wrong_magic(tmp_path):
    p = tmp_path / "bad"
    p.write_bytes(b"PK\x03\x04" + b"\x00" * 20)
    with pytest.raises(IdxError, match="bad magic") as err:
        ds.read_idx(p)
    assert str(p) in str(err.value)
    q = tmp_path / "dtype"
    q.write_bytes(struct.pack(">II", 0x0A01, 1) + b"\x00")
    with pytest.raises(IdxError, match="unsupported IDX dtype code 0x0a"):
        ds.read_idx(q)


def test_labels_file_where_images_belong(tmp_path):
    write_fmnist(tmp_path, 10)
    imgs = tmp_path / "train-images-idx3-ubyte.gz"
    imgs.write_bytes((tmp_path / "train-labels-idx1-ubyte.gz").read_bytes())
    with pytest.raises(IdxError, match="magic number 2049 .*labels.* where 2051 .*images") as err:
        ds.load_fashion_mnist(tmp_path)
    assert str(imgs) in str(err.value)


def test_count_mismatch_names_both_files(tmp_path):
    write_fmnist(tmp_path, n_images=10, n_labels=9)
    with pytest.raises(DatasetError, match="10 images .* 9 labels") as err:
        ds.load_fashion_mnist(tmp_path)
    msg = str(err.value)
    assert "train-images-idx3-ubyte.gz" in msg and "train-labels-idx1-ubyte.gz" in msg


def test_label_out_of_range(tmp_path):
    write_fmnist(tmp_path, n_images=5)
    labels = np.array([0, 1, 2, 10, 3], np.uint8)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    with pytest.raises(DatasetError, match="label 10 at index 3 is outside 0..9"):
        ds.load_fashion_mnist(tmp_path)


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-labels-idx1-ubyte"):
        (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"")
        ds.load_fashion_mnist(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ds.load_fashion_mnist(tmp_path / "nowhere")


# -------------------------------------------------------------------- the root


def test_env_var_root(tmp_path, monkeypatch):
    write_fmnist(tmp_path, n_images=12, gz=False)
    monkeypatch.setenv(ds.FMNIST_ENV, str(tmp_path))
    assert ds.fashion_mnist_root() == (tmp_path, "env")
    assert len(ds.load_fashion_mnist()) == 12
    # the argument wins over the variable
    write_fmnist(tmp_path / "other", n_images=7)
    assert len(ds.load_fashion_mnist(tmp_path / "other")) == 7
    # a variable pointing nowhere is an error, not a silent fall-back
    monkeypatch.setenv(ds.FMNIST_ENV, str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match=ds.FMNIST_ENV):
        ds.load_fashion_mnist()


# ------------------------------------------------------------------- checksums


def test_checksum_verifier_on_local_files(tmp_path):
    ds.verify_shipped_fashion_mnist()
    root = ds.fashion_mnist_root()[0]
    ds.verify_file(root / "train-labels-idx1-ubyte.gz",
                   sha256=ds.SHIPPED_FMNIST_SHA256["train-labels-idx1-ubyte.gz"])
    p = tmp_path / "f"
    p.write_bytes(b"hello\n")
    ds.verify_file(p, md5="b1946ac92492d2347c6235b4d2611184",
                   sha256="5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03")
    with pytest.raises(ChecksumError, match="md5 b1946ac92492d2347c6235b4d2611184, expected 0+") as err:
        ds.verify_file(p, md5="0" * 32)
    assert str(p) in str(err.value)
    with pytest.raises(ValueError):
        ds.verify_file(p)
    # the official MD5 table is complete and well-formed
    assert set(ds.FMNIST_MD5) == {n + ".gz" for pair in ds.FMNIST_FILES.values() for n in pair}
    assert all(len(v) == 32 and int(v, 16) >= 0 for v in ds.FMNIST_MD5.values())


# ----------------------------------------------------------------------- split


def test_split_is_fixed_disjoint_and_covers_everything():
    a = ds.split_dataset(6226, seed=0, description="shipped Fashion-MNIST images")
    b = ds.split_dataset(6226, seed=0, description="shipped Fashion-MNIST images")
    c = ds.split_dataset(6226, seed=1)
    assert str(a) == "train 4358 / val 934 / test 934 of 6226 shipped Fashion-MNIST images, seed 0"
    for x, y in zip((a.train, a.val, a.test), (b.train, b.val, b.test)):
        assert torch.equal(x, y)
    assert a.fingerprint == b.fingerprint != c.fingerprint
    allidx = torch.cat([a.train, a.val, a.test])
    assert allidx.numel() == 6226 and torch.equal(allidx.sort().values, torch.arange(6226))
    assert a.as_dict()["text"] == str(a) and a.as_dict()["seed"] == 0
    for n in (0, 1, 2, 3, 10, 101):
        s = ds.split_dataset(n, (0.0, 0.5, 0.5))
        assert sum(s.sizes) == n and min(s.sizes) >= 0
    with pytest.raises(ValueError):
        ds.split_dataset(10, (0.5, 0.5, 0.5))


def test_make_loaders_limit_and_determinism():
    tr, va, te, split = ds.make_loaders(limit=100, batch_size=16, seed=3)
    assert split.sizes == (70, 15, 15) and split.seed == 3
    assert str(split).endswith("of 100 images (the first 100 of 6226 shipped Fashion-MNIST images), seed 3")
    x, y = next(iter(tr))
    assert x.shape == (16, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert sum(b[0].shape[0] for b in va) == 15 and sum(b[0].shape[0] for b in te) == 15
    # normalised with the train statistics
    xs = torch.cat([b[0] for b in tr])
    assert abs(float(xs.mean())) < 1e-4 and abs(float(xs.std(unbiased=False)) - 1) < 1e-3
    assert split.mean is not None and split.std is not None
    # same seed, same batches, epoch after epoch (each epoch reshuffles)
    def labels_per_epoch(loader, epochs=2):
        return [torch.cat([b[1] for b in loader]) for _ in range(epochs)]
    e1 = labels_per_epoch(ds.make_loaders(limit=100, batch_size=16, seed=3).train)
    e2 = labels_per_epoch(ds.make_loaders(limit=100, batch_size=16, seed=3).train)
    e3 = labels_per_epoch(ds.make_loaders(limit=100, batch_size=16, seed=4).train)
    assert all(torch.equal(a, b) for a, b in zip(e1, e2))
    assert not torch.equal(e1[0], e1[1]) and not torch.equal(e1[0], e3[0])
    raw = ds.make_loaders(limit=20, normalize=False)
    assert float(torch.cat([b[0] for b in raw.train]).min()) >= 0.0 and raw.split.mean is None
    with pytest.raises(ValueError, match="unknown data set"):
        ds.make_loaders("imagenet")


# ---------------------------------------------------------------------- CIFAR-10


def write_cifar(root, per_batch=4, protocol=2):
    rng = np.random.default_rng(1)
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    names = ["data_batch_%d" % i for i in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {b"batch_label": name.encode(),
                 b"data": rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in rng.integers(0, 10, size=per_batch)],
                 b"filenames": [b"x.png"] * per_batch}
        with open(d / name, "wb") as f:
            pickle.dump(batch, f, protocol=protocol)
    return d


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar10_from_python_batches(tmp_path, protocol):
    d = write_cifar(tmp_path, per_batch=4, protocol=protocol)
    train = ds.load_cifar10(tmp_path)  # the parent of cifar-10-batches-py works
    assert train.images.shape == (20, 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.labels.shape == (20,) and train.labels.dtype == torch.int64
    with open(d / "data_batch_1", "rb") as f:
        first = pickle.load(f, encoding="bytes")
    np.testing.assert_array_equal(train.images[:4].reshape(4, -1).numpy(), first[b"data"])
    test = ds.load_cifar10(d, split="test")
    assert len(test) == 4
    loaders = ds.make_loaders("cifar10", root=d, batch_size=8)
    assert next(iter(loaders.train))[0].shape == (8, 3, 32, 32)
    assert len(loaders.split.mean) == 3


def test_cifar10_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="not shipped"):
        ds.load_cifar10()
    d = write_cifar(tmp_path)
    monkeypatch.setenv(ds.CIFAR10_ENV, str(d))
    assert len(ds.load_cifar10()) == 20
    (d / "data_batch_3").write_bytes(b"\x80\x02}q\x00(X")  # cut short
    with pytest.raises(DatasetError, match="data_batch_3: not a readable CIFAR-10") as err:
        ds.load_cifar10(d)
    assert isinstance(err.value, ValueError)
    with open(d / "data_batch_3", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f, protocol=2)
    with pytest.raises(DatasetError, match=r"uint8 \[N, 3072\]"):
        ds.load_cifar10(d)
    with open(d / "data_batch_3", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, f, protocol=2)
    with pytest.raises(DatasetError, match="2 images but"):
        ds.load_cifar10(d)
    with open(d / "data_batch_3", "wb") as f:  # arbitrary callables are refused
        pickle.dump({b"data": print, b"labels": []}, f, protocol=2)
    with pytest.raises(DatasetError, match="not allowed"):
        ds.load_cifar10(d)
    (d / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        ds.load_cifar10(d)


@pytest.mark.parametrize("fractions", [(0.5, 0.5), (0.5, 0.5, 0.5), (1.2, -0.1, -0.1), (float("nan"), 0.5, 0.5)])
def test_bad_fractions(fractions):
    with pytest.raises(ValueError, match="fractions must be three fractions"):
        ds.split_dataset(10, fractions)
