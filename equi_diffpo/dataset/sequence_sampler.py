"""Fixed-length windows over concatenated episodes, padded at episode edges.

Why padding: the policy sees ``n_obs_steps`` observations and predicts ``horizon`` actions starting
at the first of them. At the first step of an episode there is no history, and near the end there
are fewer than ``horizon`` future actions; repeating the episode's first/last frame (as
diffusion_policy does) lets every step of every episode be a training sample. ``pad_before =
n_obs_steps - 1`` and ``pad_after = n_action_steps - 1`` bound how much of a window is repeated.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Tuple

import numpy as np


def create_indices(episode_ends: np.ndarray, sequence_length: int, pad_before: int, pad_after: int,
                   episode_mask: np.ndarray) -> np.ndarray:
    """One row per window: ``(buffer_start, buffer_end, sample_start, sample_end)``.

    ``buffer[buffer_start:buffer_end]`` is the real data of the window, placed at
    ``out[sample_start:sample_end]`` of a ``sequence_length`` output; the rest is padding. Window
    starts range over ``[-pad_before, T - sequence_length + pad_after]`` relative to the episode
    start, so an episode shorter than ``sequence_length - pad_before - pad_after`` gives no windows.
    Returns (M, 4) int64.
    """
    rows = []
    episode_start = 0
    for i, episode_end in enumerate(episode_ends):
        length = int(episode_end) - episode_start
        if episode_mask[i]:
            for start in range(-pad_before, length - sequence_length + pad_after + 1):
                real_start = max(start, 0)
                real_end = min(start + sequence_length, length)
                rows.append((episode_start + real_start, episode_start + real_end,
                             real_start - start, real_end - start))
        episode_start = int(episode_end)
    return np.array(rows, dtype=np.int64).reshape(-1, 4)


class SequenceSampler:
    """Precomputed padded windows over a buffer's episodes.

    ``episode_mask[i]`` selects which episodes contribute windows (train vs. validation split);
    the arrays passed to :meth:`sample_sequence` are still the full concatenated buffer.
    """

    def __init__(self, episode_ends: np.ndarray, sequence_length: int, pad_before: int = 0,
                 pad_after: int = 0, episode_mask: Optional[np.ndarray] = None):
        episode_ends = np.asarray(episode_ends, dtype=np.int64)
        if not 0 <= pad_before < sequence_length or not 0 <= pad_after < sequence_length:
            raise ValueError(f"pads must be in [0, sequence_length={sequence_length}); "
                             f"got pad_before={pad_before}, pad_after={pad_after}")
        if episode_mask is None:
            episode_mask = np.ones(len(episode_ends), dtype=bool)
        if len(episode_mask) != len(episode_ends):
            raise ValueError(f"episode_mask has {len(episode_mask)} entries for {len(episode_ends)} episodes")
        self.sequence_length = sequence_length
        self.indices = create_indices(episode_ends, sequence_length, pad_before, pad_after,
                                      np.asarray(episode_mask, dtype=bool))

    def __len__(self) -> int:
        return len(self.indices)

    def sample_sequence(self, arrays: Mapping[str, np.ndarray], idx: int) -> Dict[str, np.ndarray]:
        """Window ``idx`` of every array in ``arrays`` (each ``(T_total, ...)``), as
        ``(sequence_length, ...)`` numpy arrays with edge frames repeated into the padding."""
        buffer_start, buffer_end, sample_start, sample_end = (int(v) for v in self.indices[idx])
        out = {}
        for key, array in arrays.items():
            # A copy, so callers may modify a sample in place without touching the buffer.
            data = np.array(array[buffer_start:buffer_end])
            if sample_start == 0 and sample_end == self.sequence_length:
                out[key] = data
                continue
            window = np.empty((self.sequence_length, *data.shape[1:]), dtype=data.dtype)
            # buffer_start is clipped to the episode start, so data[0] is the episode's first
            # frame whenever there is padding before (and data[-1] its last frame after).
            window[:sample_start] = data[0]
            window[sample_start:sample_end] = data
            window[sample_end:] = data[-1]
            out[key] = window
        return out


def get_val_mask(n_episodes: int, val_ratio: float, seed: int = 0) -> np.ndarray:
    """(n_episodes,) bool, True for validation episodes, chosen at random by ``seed``.

    Keeps at least one training episode, and takes at least one validation episode whenever
    ``val_ratio > 0`` and there are two or more episodes (so a tiny dataset still validates).
    """
    mask = np.zeros(n_episodes, dtype=bool)
    if val_ratio <= 0 or n_episodes < 2:
        return mask
    n_val = min(max(1, round(n_episodes * val_ratio)), n_episodes - 1)
    rng = np.random.default_rng(seed)
    mask[rng.choice(n_episodes, size=n_val, replace=False)] = True
    return mask


def downsample_mask(mask: np.ndarray, max_n: Optional[int], seed: int = 0) -> np.ndarray:
    """Keep at most ``max_n`` of the True entries of ``mask`` (chosen at random by ``seed``);
    None keeps all. Used for data-scaling runs (``max_train_episodes``)."""
    mask = np.asarray(mask, dtype=bool)
    if max_n is None or mask.sum() <= max_n:
        return mask.copy()
    rng = np.random.default_rng(seed)
    keep = rng.choice(np.flatnonzero(mask), size=max_n, replace=False)
    out = np.zeros_like(mask)
    out[keep] = True
    return out


def train_val_masks(n_episodes: int, val_ratio: float, seed: int,
                    max_train_episodes: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """``(val_mask, train_mask)``, each ``(n_episodes,)`` bool: the BC dataset's episode split (validation drawn
    first, then at most ``max_train_episodes`` of the rest). One function, so tools that need to know which demos
    a checkpoint trained on (``scripts/failure_map.py``) pick exactly what the dataset picked."""
    val_mask = get_val_mask(n_episodes, val_ratio, seed)
    return val_mask, downsample_mask(~val_mask, max_train_episodes, seed)
