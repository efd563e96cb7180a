"""Episode storage on a zarr v2 group, in the DP3/ManiFlow layout.

Layout (fixed; the converter writes it and the dataset reads it)::

    root/data/<key>          (T_total, ...)  every step of every episode, concatenated on axis 0
    root/meta/episode_ends   (E,) int64      cumulative end index of each episode (exclusive)
    root.attrs               dict            provenance, e.g. point-cloud source and env_args

Why our own small class instead of diffusion_policy's ``ReplayBuffer``: that one carries a lot we
don't need (numpy backend, resizing, copy-between-stores) and is written against zarr v2 in ways
that are easy to break; this one only appends episodes and reads them back.
"""
from __future__ import annotations

import os
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np
import zarr
from numcodecs import Blosc

# lz4 is the fast Blosc codec: decompression cost matters more than size for small datasets
# that are read fully into memory at every training start.
COMPRESSOR = Blosc(cname="lz4", clevel=5, shuffle=Blosc.NOSHUFFLE)
# Aim for chunks of a few MB: large enough that a (T, 1024, 6) point cloud isn't split into
# thousands of files, small enough that appending one short episode rewrites little.
TARGET_CHUNK_BYTES = 4 * 2**20
CONVERTER_HINT = "was it written by scripts/convert_to_pointcloud.py?"


def _chunks_for(step_shape: Sequence[int], itemsize: int) -> tuple:
    """Chunk along time only, so reading a contiguous window touches few chunks."""
    step_bytes = max(1, int(np.prod(step_shape, dtype=np.int64)) * itemsize)
    steps = int(np.clip(TARGET_CHUNK_BYTES // step_bytes, 1, 4096))
    return (steps, *step_shape)


class ReplayBuffer:
    """Append-only episode store over a zarr v2 group (on disk or in memory).

    Use :meth:`create_empty` to write and :meth:`open` to read; the constructor just wraps a
    group that already has ``data`` and ``meta/episode_ends``.
    """

    def __init__(self, root: zarr.Group):
        self.root = root

    # ------------------------------------------------------------------ construction
    @classmethod
    def create_empty(cls, path: Optional[str] = None) -> "ReplayBuffer":
        """A new, empty buffer written directly to the directory ``path`` (overwritten if it
        exists), or kept in memory when ``path`` is None."""
        store = zarr.MemoryStore() if path is None else zarr.DirectoryStore(os.fspath(path))
        root = zarr.group(store=store, overwrite=True)
        root.require_group("data")
        meta = root.require_group("meta")
        meta.zeros("episode_ends", shape=(0,), dtype=np.int64, chunks=(4096,), compressor=None)
        return cls(root)

    @classmethod
    def open(cls, path: str, mode: str = "r", required_keys: Iterable[str] = ()) -> "ReplayBuffer":
        """Open an existing buffer and check that it is consistent.

        ``required_keys`` are ``data/`` arrays the caller needs (e.g. ``('point_cloud',
        'agent_pos', 'action')``); a missing one raises ``ValueError`` naming it and the path.
        Raises ``FileNotFoundError`` if ``path`` does not exist.
        """
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"zarr dataset not found: {path!r} ({CONVERTER_HINT})")
        try:
            root = zarr.open_group(path, mode=mode)
        except (zarr.errors.GroupNotFoundError, ValueError) as err:
            raise ValueError(f"{path!r} is not a zarr group ({CONVERTER_HINT})") from err
        if "data" not in root:
            raise ValueError(f"no 'data' group in {path!r}: {CONVERTER_HINT}")
        if "meta" not in root or "episode_ends" not in root["meta"]:
            raise ValueError(f"no meta/episode_ends array in {path!r}: {CONVERTER_HINT}")
        buffer = cls(root)
        for key in required_keys:
            if key not in root["data"]:
                raise ValueError(f"no data/{key} array in {path!r} (has {buffer.keys()}): {CONVERTER_HINT}")
        buffer._check_consistent(path)
        return buffer

    def _check_consistent(self, where: str) -> None:
        """Every data array must cover exactly the steps that episode_ends claims; a mismatch
        means an interrupted write, and silently slicing it would mix episodes."""
        ends = self.episode_ends
        if len(ends) and (ends[0] <= 0 or np.any(np.diff(ends) <= 0)):
            raise ValueError(f"meta/episode_ends in {where!r} is not strictly increasing and positive: {ends}")
        for key in self.keys():
            if self[key].shape[0] != self.n_steps:
                raise ValueError(f"data/{key} in {where!r} has {self[key].shape[0]} steps but "
                                 f"meta/episode_ends says {self.n_steps} (interrupted write?)")

    # ------------------------------------------------------------------ reading
    @property
    def data(self) -> zarr.Group:
        return self.root["data"]

    @property
    def attrs(self) -> zarr.attrs.Attributes:
        """Root attributes (dict-like, JSON values); records provenance such as the point-cloud
        source and robomimic ``env_args`` so training can check it matches the env."""
        return self.root.attrs

    @property
    def episode_ends(self) -> np.ndarray:
        """(E,) int64 cumulative exclusive end index of each episode."""
        return np.asarray(self.root["meta"]["episode_ends"][:], dtype=np.int64)

    @property
    def n_episodes(self) -> int:
        return int(self.root["meta"]["episode_ends"].shape[0])

    @property
    def n_steps(self) -> int:
        ends = self.root["meta"]["episode_ends"]
        return int(ends[-1]) if ends.shape[0] else 0

    def keys(self) -> List[str]:
        return sorted(self.data.array_keys())

    def __getitem__(self, key: str) -> zarr.Array:
        return self.data[key]

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def get_episode(self, i: int) -> Dict[str, np.ndarray]:
        """All arrays of episode ``i`` (negative counts from the end), each ``(T_i, ...)``."""
        n = self.n_episodes
        if not -n <= i < n:
            raise IndexError(f"episode {i} out of range for {n} episodes")
        i %= n
        ends = self.episode_ends
        start = int(ends[i - 1]) if i > 0 else 0
        return {key: self[key][start:int(ends[i])] for key in self.keys()}

    # ------------------------------------------------------------------ writing
    def add_episode(self, episode: Mapping[str, np.ndarray]) -> None:
        """Append one episode; every array is ``(T, ...)`` with the same ``T > 0``, and the keys
        must match those already stored (after the first episode)."""
        arrays = {key: np.asarray(value) for key, value in episode.items()}
        if any(value.ndim == 0 for value in arrays.values()):
            raise ValueError(f"episode arrays must be (T, ...); got shapes { {k: v.shape for k, v in arrays.items()} }")
        lengths = {key: value.shape[0] for key, value in arrays.items()}
        if not lengths:
            raise ValueError("add_episode got no arrays")
        if len(set(lengths.values())) != 1:
            raise ValueError(f"episode arrays differ in length: {lengths}")
        n_new = next(iter(lengths.values()))
        if n_new == 0:
            raise ValueError("add_episode got an empty episode")
        if self.n_episodes and sorted(arrays) != self.keys():
            raise ValueError(f"episode keys {sorted(arrays)} differ from stored keys {self.keys()}")

        # Check every shape before writing anything, so a bad episode leaves the buffer untouched.
        for key, value in arrays.items():
            if key in self.data and self.data[key].shape[1:] != value.shape[1:]:
                raise ValueError(f"{key}: step shape {value.shape[1:]} differs from stored "
                                 f"{self.data[key].shape[1:]}")
        for key, value in arrays.items():
            if key not in self.data:
                self.data.zeros(key, shape=(0, *value.shape[1:]), dtype=value.dtype,
                                chunks=_chunks_for(value.shape[1:], value.dtype.itemsize),
                                compressor=COMPRESSOR)
            arr = self.data[key]
            arr.append(value.astype(arr.dtype, copy=False), axis=0)
        # Written last, so an interrupted append shows up as a length mismatch in open().
        self.root["meta"]["episode_ends"].append(np.array([self.n_steps + n_new], dtype=np.int64))

    def __repr__(self) -> str:
        shapes = {key: self[key].shape for key in self.keys()}
        return f"ReplayBuffer(n_episodes={self.n_episodes}, n_steps={self.n_steps}, data={shapes})"
