"""Safetensors checkpoint files: one reader for single files, sharded indexes and directories.

Every loader in `trackedit_jax.convert` reads through `open_checkpoint`, which streams tensors
one at a time (`safe_open` memory-maps the file, so only the tensor being converted is in host
memory) and refuses pickle-based formats outright.
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
from collections.abc import Iterator, Mapping

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


class PickleCheckpointError(ValueError):
    """A checkpoint in a pickle-based format was given; we never unpickle."""


def _refuse_pickle(path: pathlib.Path) -> None:
    raise PickleCheckpointError(
        f"{path} is a PyTorch pickle checkpoint; loading pickle can run arbitrary code, so trackedit never "
        "does. Convert it to safetensors first: `trackedit convert --trust-pickle IN OUT.safetensors` "
        "(only for files from a source you trust)."
    )


class CheckpointReader:
    """Read-only view of the tensors of one checkpoint (one or many safetensors files).

    Attributes:
      path: what the user gave (file, index json or directory).
      files: key -> safetensors file holding it.
    """

    def __init__(self, path: str | os.PathLike, files: Mapping[str, pathlib.Path]):
        self.path = pathlib.Path(path)
        self.files = dict(files)
        self._handles: dict[pathlib.Path, object] = {}

    def _handle(self, file: pathlib.Path):
        if file not in self._handles:
            self._handles[file] = _checked(file, lambda: safe_open(str(file), framework="np"))
        return self._handles[file]

    def keys(self) -> list[str]:
        return sorted(self.files)

    def __contains__(self, key: str) -> bool:
        return key in self.files

    def __len__(self) -> int:
        return len(self.files)

    def shape(self, key: str) -> tuple[int, ...]:
        file = self.files[key]
        return tuple(_checked(file, lambda: self._handle(file).get_slice(key).get_shape(), key))

    def get(self, key: str) -> np.ndarray:
        """The tensor `key` as a numpy array in its stored dtype (bf16 as ml_dtypes.bfloat16)."""
        if key not in self.files:
            raise KeyError(f"{self.path}: no tensor named {key!r}")
        file = self.files[key]
        return _checked(file, lambda: self._handle(file).get_tensor(key), key)

    def items(self) -> Iterator[tuple[str, np.ndarray]]:
        """Stream (key, tensor) pairs, one tensor in memory at a time, file by file."""
        for key in sorted(self.files, key=lambda k: (str(self.files[k]), k)):
            yield key, self.get(key)

    @property
    def config_path(self) -> pathlib.Path:
        """Where the `config.json` beside the weights would be (it may not exist)."""
        return (self.path if self.path.is_dir() else self.path.parent) / "config.json"

    def config(self) -> dict | None:
        """The `config.json` beside the weights, or None."""
        cfg = self.config_path
        if not cfg.is_file():
            return None
        try:
            data = json.loads(cfg.read_text())
        except (ValueError, RecursionError) as e:  # not UTF-8, not JSON, nested too deeply
            raise ValueError(f"{cfg}: not a readable JSON file ({_one_line(e)})") from e
        if not isinstance(data, dict):
            raise ValueError(f"{cfg}: expected a JSON object; got {type(data).__name__}")
        return data

    def close(self) -> None:
        self._handles.clear()

    def __enter__(self) -> CheckpointReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}" if text else type(e).__name__


def _checked(file: pathlib.Path, fn, key: str | None = None):
    """fn() with the errors safetensors raises for a malformed file (`SafetensorError`, not a ValueError)
    turned into one-line ValueErrors naming the file (and tensor)."""
    try:
        return fn()
    except MemoryError:
        raise
    except Exception as e:
        what = f"{file}: tensor {key!r}" if key is not None else f"{file}"
        raise ValueError(f"{what}: not a readable safetensors file ({_one_line(e)})") from e


def _files_of_index(index_path: pathlib.Path) -> dict[str, pathlib.Path]:
    try:
        index = json.loads(index_path.read_text())
    except (ValueError, RecursionError) as e:  # not UTF-8, not JSON, nested too deeply
        raise ValueError(f"{index_path}: not a readable JSON index ({_one_line(e)})") from e
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise ValueError(f"{index_path}: not a safetensors index (no 'weight_map' mapping)")
    out = {}
    for key, name in weight_map.items():
        # a shard is a file name beside the index: no folders, so an index cannot point elsewhere
        if not isinstance(name, str) or pathlib.PurePath(name).name != name or name in ("", ".", ".."):
            raise ValueError(f"{index_path}: weight_map[{key!r:.80}] must be a file name beside the index")
        file = index_path.parent / name
        if not file.is_file():
            raise FileNotFoundError(f"{index_path}: shard {name} (holding {key!r}) is missing")
        out[key] = file
    return out


def _files_of_safetensors(files: list[pathlib.Path]) -> dict[str, pathlib.Path]:
    out: dict[str, pathlib.Path] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="np") as f:
                keys = list(f.keys())
        except Exception as e:
            if isinstance(e, MemoryError):
                raise
            raise ValueError(f"{file}: not a readable safetensors file ({_one_line(e)})") from e
        for key in keys:
            if key in out:
                raise ValueError(f"tensor {key!r} appears in both {out[key]} and {file}")
            out[key] = file
    return out


def open_checkpoint(path: str | os.PathLike, *, prefer: str | None = None) -> CheckpointReader:
    """Open a checkpoint given as a `.safetensors` file, a `*.safetensors.index.json` or a directory.

    A directory is searched for an index first, then for `*.safetensors` files. `prefer` picks among
    several indexes/files in a directory by substring (e.g. "diffusion_pytorch_model").
    Pickle formats (.bin, .pt, .pth, .ckpt) raise `PickleCheckpointError`.
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_file():
        if path.suffix in PICKLE_SUFFIXES:
            _refuse_pickle(path)
        if path.name.endswith(".index.json"):
            return CheckpointReader(path, _files_of_index(path))
        if path.suffix == ".safetensors":
            return CheckpointReader(path, _files_of_safetensors([path]))
        raise ValueError(f"{path}: expected a .safetensors file, a .safetensors.index.json or a directory")
    indexes = sorted(path.glob("*.safetensors.index.json"))
    singles = sorted(path.glob("*.safetensors"))
    if prefer is not None:
        indexes = [p for p in indexes if prefer in p.name] or indexes
        singles = [p for p in singles if prefer in p.name] or singles
    if len(indexes) == 1:
        return CheckpointReader(path, _files_of_index(indexes[0]))
    if len(indexes) > 1:
        raise ValueError(f"{path}: several safetensors indexes {[p.name for p in indexes]}; pass one of them")
    if singles:
        return CheckpointReader(path, _files_of_safetensors(singles))
    pickles = [p for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES]
    if pickles:
        _refuse_pickle(pickles[0])
    raise FileNotFoundError(f"{path}: no .safetensors files or index in this directory")


def write_safetensors(
    tensors: Mapping[str, np.ndarray],
    out_dir: str | os.PathLike,
    *,
    basename: str = "diffusion_pytorch_model",
    max_shard_bytes: int = 5 * 1024**3,
    metadata: Mapping[str, str] | None = None,
) -> list[pathlib.Path]:
    """Write tensors as `<basename>.safetensors`, or as shards plus `<basename>.safetensors.index.json`
    when they exceed `max_shard_bytes`, the layout diffusers/transformers `from_pretrained` read.
    Files are written to temporary names and renamed, so a crash leaves no half-written checkpoint.
    """
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for key in sorted(tensors):
        arr = np.ascontiguousarray(tensors[key])
        if shards[-1] and size + arr.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = arr
        size += arr.nbytes
    meta = {"format": "pt", **(metadata or {})}
    names = (
        [f"{basename}.safetensors"]
        if len(shards) == 1
        else [f"{basename}-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    written = []
    for name, shard in zip(names, shards):
        fd, tmp = tempfile.mkstemp(suffix=".tmp", dir=out_dir)
        os.close(fd)
        try:
            try:
                save_file(shard, tmp, metadata=meta)
            except Exception as e:  # SafetensorError wraps the OSError of a full disk
                if isinstance(e, MemoryError):
                    raise
                raise OSError(f"{out_dir / name}: cannot write ({_one_line(e)})") from e
            os.replace(tmp, out_dir / name)
        except BaseException:
            pathlib.Path(tmp).unlink(missing_ok=True)
            raise
        written.append(out_dir / name)
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": int(sum(a.nbytes for s in shards for a in s.values()))},
            "weight_map": {k: n for n, s in zip(names, shards) for k in s},
        }
        index_path = out_dir / f"{basename}.safetensors.index.json"
        tmp = index_path.with_name(f".{index_path.name}.tmp-{os.getpid()}")
        try:
            tmp.write_text(json.dumps(index, indent=2, sort_keys=True))
            os.replace(tmp, index_path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return written
