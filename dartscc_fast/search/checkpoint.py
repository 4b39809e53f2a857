"""Search checkpoints: plain contents, a stored hash, atomic writes, one error for every bad file.

A checkpoint is a dict of plain values (tensors, dicts, lists, tuples, numbers, strings, None)
written by ``torch.save`` and read back with ``torch.load(weights_only=True)``: loading never runs
code from the file. The SHA-256 of its contents (:func:`content_digest`) is stored beside them,
under ``"integrity"``, and checked on every load: torch.load does not check the zip archive's CRCs,
so flipped bytes would otherwise load silently. Writes go to a temporary file in the same directory,
fsynced, then renamed over the old checkpoint, so a crash or a kill mid-write keeps the old one; the
temporary file is removed when the write fails.

Checkpoints written before the hash (format 1) still load, unchecked, with a warning.
"""
from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import pickle
import struct
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, Sequence, Union

import torch

__all__ = ["CheckpointError", "FORMAT", "VERSION", "content_digest", "table_digest", "save_checkpoint",
           "load_checkpoint", "checkpoint_part", "stale_temp_files"]

FORMAT = "dartscc_fast.search.checkpoint"
#: 1: no stored hash (before this module); 2: "integrity" holds the SHA-256 of the other contents.
VERSION = 2
_ZIP_MAGIC = b"PK\x03\x04"
_PLAIN_DICTS = (dict, collections.OrderedDict)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, corrupt, unsafe, or not the one expected.

    ``path`` is the file and ``cause`` says what is wrong with it.
    """

    def __init__(self, path: Union[str, os.PathLike], cause: str):
        self.path = Path(path)
        self.cause = cause
        super().__init__(f"checkpoint {self.path}: {cause}")


# ------------------------------------------------------------------------------ hashing
def _update(h, obj: Any, where: str) -> None:
    t = type(obj)
    if obj is None:
        h.update(b"N")
    elif t is bool:
        h.update(b"B1" if obj else b"B0")
    elif t is int:
        s = str(obj).encode()
        h.update(b"I%d:" % len(s) + s)
    elif t is float:
        h.update(b"F" + struct.pack("<d", obj))
    elif t is str:
        s = obj.encode("utf-8", "surrogatepass")
        h.update(b"S%d:" % len(s) + s)
    elif isinstance(obj, torch.Tensor) and t in (torch.Tensor, torch.nn.Parameter):
        if obj.layout != torch.strided or obj.is_quantized:
            raise TypeError(f"checkpoint contents must be dense tensors; {where} is {obj.layout}")
        x = obj.detach().cpu().contiguous().reshape(-1)
        head = f"T{x.dtype}:{tuple(obj.shape)}:".encode()
        h.update(head)
        if x.numel():
            h.update(x.view(torch.uint8).numpy().data)
    elif t in (list, tuple):  # one tag: a tuple may come back as a list from other writers
        h.update(b"L%d:" % len(obj))
        for i, v in enumerate(obj):
            _update(h, v, f"{where}[{i}]")
    elif t in _PLAIN_DICTS:
        h.update(b"D%d:" % len(obj))
        for k, v in obj.items():
            if type(k) not in (str, int):
                raise TypeError(f"checkpoint keys must be strings or integers; {where} has a {type(k).__name__} key")
            _update(h, k, where)
            _update(h, v, f"{where}[{k!r}]")
    else:
        raise TypeError(f"checkpoint contents must be plain (tensors, dicts, lists, numbers, strings, None); "
                        f"{where} is a {t.__module__}.{t.__name__}")


def content_digest(obj: Any) -> str:
    """SHA-256 (hex) of plain contents: keys in order, tensors by dtype, shape and bytes.

    TypeError, naming the place, for anything that ``torch.load(weights_only=True)`` should not have
    to rebuild (a custom class, a NumPy scalar, ...).
    """
    h = hashlib.sha256()
    _update(h, obj, "checkpoint")
    return h.hexdigest()


def table_digest(table: Dict) -> str:
    """SHA-256 (hex) of what a search takes from a latency table (its ``to_dict()``): the entries, their unit
    and the target whose entries it looks up; not the file's spacing, nor provenance such as its date."""
    meta = table.get("meta") or {}
    used = {"schema": table.get("schema"), "unit": table.get("unit"), "entries": table.get("entries"),
            "target": {k: meta.get(k) for k in ("device", "batch", "dtype", "memory_format")}}
    text = json.dumps(used, sort_keys=True, separators=(",", ":"), allow_nan=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


# ------------------------------------------------------------------------------ writing
def _tmp_prefix(path: Path) -> str:
    return path.name + "."


def stale_temp_files(path: Union[str, os.PathLike]) -> list:
    """Temporary files that writes of ``path`` left behind (a process killed mid-write cannot remove its own)."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    prefix = _tmp_prefix(path)
    # ours (<name>.<random>.tmp), and the <name>.tmp<pid> of the writes before this module
    return sorted(p for p in path.parent.iterdir() if p.name.startswith(prefix) and p.is_file()
                  and (p.name.endswith(".tmp") or p.name[len(prefix):].startswith("tmp")))


def save_checkpoint(obj: Dict, path: Union[str, os.PathLike]) -> Path:
    """Write ``obj`` (plain contents) and its hash to ``path`` atomically; returns the path.

    The old file stays until the new one is complete on disk; the temporary file is removed if the
    write fails (an exception, a full disk, Ctrl-C).
    """
    path = Path(path)
    if not isinstance(obj, dict) or "integrity" in obj:
        raise ValueError("save_checkpoint: obj must be a dict without an 'integrity' key")
    payload = dict(obj)
    payload["integrity"] = {"format": FORMAT, "version": VERSION, "sha256": content_digest(obj)}
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # the rename itself durable, where the platform allows it
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return path


# ------------------------------------------------------------------------------ reading
def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    for line in text.splitlines():  # torch's weights_only message: the blocked global is on its own line
        if "GLOBAL" in line or "Unsupported" in line:
            return line.strip()
    return text.splitlines()[0] if text else type(e).__name__


def load_checkpoint(path: Union[str, os.PathLike], required: Sequence[str] = ()) -> Dict:
    """The contents of a checkpoint, read with ``weights_only=True`` and checked against their hash.

    Raises :class:`CheckpointError` (naming the file and the cause) for an empty, truncated, corrupt,
    non-checkpoint or unsafe file, or one without the ``required`` keys; FileNotFoundError if there is none.
    """
    path = Path(path)
    size = path.stat().st_size  # FileNotFoundError as is: the caller knows which run is missing
    if size == 0:
        raise CheckpointError(path, "the file is empty (0 bytes); a write that never finished, or not a checkpoint")
    with open(path, "rb") as f:
        head = f.read(len(_ZIP_MAGIC))
    if head != _ZIP_MAGIC:
        raise CheckpointError(path, f"not a PyTorch checkpoint (no zip archive header; it starts with {head!r})")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(path, "refused: it holds more than tensors, dicts, lists, numbers and strings, "
                                    f"and loading it could run code ({_first_line(e)})") from None
    except Exception as e:  # noqa: BLE001  (zip, pickle and storage errors all mean a damaged file)
        raise CheckpointError(path, f"truncated or corrupt ({type(e).__name__}: {_first_line(e)})") from None
    if not isinstance(ck, dict):
        raise CheckpointError(path, f"holds a {type(ck).__name__}, not a checkpoint's dict")
    integrity = ck.pop("integrity", None)
    if integrity is None:
        warnings.warn(f"checkpoint {path}: written by an older dartscc_fast without a stored hash (format 1); "
                      "loaded unchecked. A --resume rewrites it with one.", stacklevel=2)
    else:
        if not isinstance(integrity, dict) or integrity.get("format") != FORMAT:
            raise CheckpointError(path, f"its 'integrity' record is not this package's ({integrity!r:.80})")
        version = integrity.get("version")
        if not isinstance(version, int) or version > VERSION:
            raise CheckpointError(path, f"written in checkpoint format {version!r}, newer than this dartscc_fast "
                                        f"reads ({VERSION}); upgrade dartscc_fast")
        try:
            digest = content_digest(ck)
        except TypeError as e:
            raise CheckpointError(path, f"corrupt: {e}") from None
        if digest != integrity.get("sha256"):
            raise CheckpointError(path, "corrupt: its contents do not match the SHA-256 stored with them "
                                        f"(stored {str(integrity.get('sha256'))[:12]}..., now {digest[:12]}...); "
                                        "restore a copy or run the search again")
    missing = [k for k in required if k not in ck]
    if missing:
        raise CheckpointError(path, f"not a search checkpoint: it lacks {', '.join(map(repr, missing))}")
    return ck


@contextlib.contextmanager
def checkpoint_part(path: Union[str, os.PathLike], what: str) -> Iterator[None]:
    """Turn the errors of using a loaded checkpoint's ``what`` (its settings, its weights) into a
    :class:`CheckpointError` naming the file: a checkpoint of another version or another space."""
    try:
        yield
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as e:
        detail = " ".join(str(e).split())
        detail = detail if len(detail) <= 300 else detail[:297] + "..."
        raise CheckpointError(path, f"{what} ({type(e).__name__}: {detail})") from None
