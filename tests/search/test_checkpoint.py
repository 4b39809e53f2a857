"""Checkpoints: plain contents read with weights_only=True, a stored hash, atomic writes, one clear error."""
import contextlib
import dataclasses
import os
import random

import pytest
import torch

from dartscc_fast import cli
from dartscc_fast.search import SearchConfig, load_search, run_search
from dartscc_fast.search.checkpoint import (
    CheckpointError,
    content_digest,
    load_checkpoint,
    save_checkpoint,
    stale_temp_files,
)

TINY = SearchConfig(space_overrides={"C": 4}, limit=300, epochs=1, warmup_epochs=0, batch_size=16,
                    max_steps_per_epoch=2, progress=False)


class _Makedirs:
    """Pickles as a call of os.makedirs(path): what a hostile checkpoint would run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.makedirs, (self.path,)


@pytest.fixture(scope="module")
def search_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("search")
    run_search(dataclasses.replace(TINY, out_dir=str(out)))
    return out


def test_roundtrip_is_plain_and_hashed(tmp_path):
    obj = {"a": torch.arange(6.0).reshape(2, 3), "b": [1, 2.5, "x", None, (3, 4)], "c": {"d": True, 7: "seven"},
           "e": torch.tensor([True, False]), "f": torch.zeros(0), "g": torch.ones(2, dtype=torch.bfloat16)}
    path = save_checkpoint(obj, tmp_path / "ck.pt")
    raw = torch.load(path, weights_only=True)  # plain: torch's safe loader reads it as is
    assert raw["integrity"]["sha256"] == content_digest(obj)
    back = load_checkpoint(path)
    assert back.keys() == obj.keys() and "integrity" not in back
    torch.testing.assert_close(back["a"], obj["a"])
    assert back["b"] == [1, 2.5, "x", None, (3, 4)] and back["c"] == {"d": True, 7: "seven"}
    assert content_digest(back) == content_digest(obj)
    # the digest sees every value: one element, one key or a dtype changed
    assert content_digest({**obj, "a": obj["a"] + 1e-6}) != content_digest(obj)
    assert content_digest({**obj, "c": {"d": True, 8: "seven"}}) != content_digest(obj)
    assert content_digest({**obj, "a": obj["a"].double()}) != content_digest(obj)


def test_save_refuses_contents_that_are_not_plain(tmp_path):
    import numpy as np
    for bad, where in (({"x": np.float64(1.0)}, r"checkpoint\['x'\]"), ({"y": [_Makedirs(tmp_path)]}, r"\['y'\]\[0\]"),
                       ({"z": {1.5: 2}}, "float key")):
        with pytest.raises(TypeError, match=where):
            save_checkpoint(bad, tmp_path / "ck.pt")
    assert not any(tmp_path.iterdir())  # checked before anything is written


def test_search_checkpoint_loads_with_weights_only(search_dir):
    ck = torch.load(search_dir / "checkpoint.pt", weights_only=True)
    assert ck["integrity"]["version"] == 2 and ck["finished"] and ck["latency_digest"]
    assert isinstance(ck["split"], dict) and isinstance(ck["history"], list) and isinstance(ck["config"], dict)
    r = load_search(search_dir)
    assert r.epoch == 1 and r.config.split == TINY.split


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, capsys):
    target = tmp_path / "pwned"
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"config": _Makedirs(target)}, run / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="could run code.*os.makedirs") as e:
        load_search(run)
    assert e.value.path == run / "checkpoint.pt"
    assert not target.exists()
    assert cli.main(["derive", "--search", str(run), "--S", "A"]) == 2
    err = capsys.readouterr().err
    assert str(run / "checkpoint.pt") in err and "could run code" in err
    assert not target.exists()


@pytest.mark.parametrize("kind, cause", [
    ("empty", "empty"), ("truncated", "truncated or corrupt"), ("text", "not a PyTorch checkpoint"),
    ("random", "not a PyTorch checkpoint"), ("zip-of-junk", "truncated or corrupt")])
def test_unreadable_checkpoints_name_the_file_and_the_cause(tmp_path, search_dir, kind, cause):
    good = (search_dir / "checkpoint.pt").read_bytes()
    data = {"empty": b"", "truncated": good[: len(good) // 2], "text": "epoch,step\n0,1\n".encode(),
            "random": random.Random(0).randbytes(4096),
            "zip-of-junk": good[:4] + random.Random(1).randbytes(4096)}[kind]
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match=cause) as e:
        load_search(tmp_path)
    assert e.value.path == path and str(path) in str(e.value)


def test_flipped_bytes_are_detected(tmp_path):
    big = torch.arange(100_000, dtype=torch.float64)
    path = save_checkpoint({"w": big, "meta": {"epoch": 3}}, tmp_path / "ck.pt")
    data = bytearray(path.read_bytes())
    start = bytes(data).find(big[:8].numpy().tobytes())
    assert start > 0
    rng = random.Random(0)
    for pos in rng.sample(range(start, start + big.numel() * 8), 64):
        data[pos] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(data))
    torch.load(path, weights_only=True)  # torch itself does not notice
    with pytest.raises(CheckpointError, match="do not match the SHA-256"):
        load_checkpoint(path)


def test_a_failed_write_keeps_the_old_checkpoint_and_removes_its_temp_file(tmp_path, monkeypatch):
    path = save_checkpoint({"v": 1}, tmp_path / "checkpoint.pt")
    real = torch.save

    def half_then_fail(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", half_then_fail)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint({"v": 2}, path)
    monkeypatch.setattr(torch, "save", real)
    assert load_checkpoint(path) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
    assert stale_temp_files(path) == []


def test_checkpoints_of_the_previous_version_still_load(tmp_path, search_dir):
    ck = torch.load(search_dir / "checkpoint.pt", weights_only=True)
    for k in ("integrity", "latency_digest", "position", "sums", "rng"):
        ck.pop(k)
    ck["config"].pop("checkpoint_every")
    ck["config"]["max_steps_per_epoch"] = 0  # the previous code's "no cap"
    torch.save(ck, tmp_path / "checkpoint.pt")  # as the previous code wrote it: no hash
    with pytest.warns(UserWarning, match="without a stored hash"):
        r = load_search(tmp_path)
    assert r.epoch == 1 and r.config.max_steps_per_epoch is None and r.config.checkpoint_every == 200


def test_a_checkpoint_of_something_else_says_what_is_wrong(tmp_path, search_dir):
    ck = torch.load(search_dir / "checkpoint.pt", weights_only=True)
    ck.pop("integrity")
    cases = {
        "not-a-search": ({"weights": torch.zeros(3)}, "lacks 'config'"),
        "other-space": ({**ck, "space": {**ck["space"], "C": 8}}, "weights do not fit"),
        "bad-settings": ({**ck, "config": {**ck["config"], "grad_clip": -1.0}}, "settings are not valid.*grad_clip"),
        "newer": ({**ck, "integrity": {"format": "dartscc_fast.search.checkpoint", "version": 99, "sha256": ""}},
                  "format 99, newer"),
        "list": ([1, 2], "holds a list"),
    }
    for name, (obj, cause) in cases.items():
        d = tmp_path / name
        d.mkdir()
        torch.save(obj, d / "checkpoint.pt")
        with pytest.warns(UserWarning) if name not in ("newer", "list") else contextlib.nullcontext():
            with pytest.raises(CheckpointError, match=cause):
                load_search(d)
    with pytest.raises(FileNotFoundError, match="no search checkpoint"):
        load_search(tmp_path / "missing")
