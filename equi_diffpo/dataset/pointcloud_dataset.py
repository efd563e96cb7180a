"""Torch dataset of padded point-cloud windows for BC pretraining (DP3/ManiFlow zarr layout).

Each item is one ``horizon``-long window of an episode::

    {'obs': {'point_cloud': (horizon, N, C) float32, 'agent_pos': (horizon, 9) float32},
     'action': (horizon, 10) float32}

The policy uses the first ``n_obs_steps`` observation frames and all ``horizon`` actions. Datasets
are small (tens to hundreds of demos), so everything is read into memory once: random access into
compressed zarr chunks per item would dominate the data-loading time.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Dict, Optional, Type, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from equi_diffpo.dataset.replay_buffer import ReplayBuffer
from equi_diffpo.dataset.sequence_sampler import SequenceSampler, train_val_masks
from equi_diffpo.model.equidiff_normalizer import EquidiffNormalizer
from equi_diffpo.model.normalizer import LinearNormalizer

Normalizer = Union[LinearNormalizer, EquidiffNormalizer]

KEYS = ("point_cloud", "agent_pos", "action")


@dataclass(frozen=True)
class DatasetMeta:
    """Shapes a policy needs to be built for this dataset (point_dim is after ``use_rgb``)."""
    n_points: int
    point_dim: int
    action_dim: int
    agent_pos_dim: int


class PointCloudDataset(Dataset):
    """Padded windows over the training (or validation) episodes of a point-cloud zarr.

    ``use_rgb``: None keeps the stored channels, False keeps xyz only (drops channels 3:),
    True requires xyz+rgb. ``max_train_episodes`` subsamples training episodes (data scaling);
    the validation split is drawn first and is unaffected by it.
    """

    def __init__(self, zarr_path: str, horizon: int = 16, pad_before: int = 1, pad_after: int = 7,
                 seed: int = 42, val_ratio: float = 0.02, max_train_episodes: Optional[int] = None,
                 use_rgb: Optional[bool] = None, translate_xy: float = 0.0):
        buffer = ReplayBuffer.open(zarr_path, mode="r", required_keys=KEYS)
        point_cloud = buffer["point_cloud"]
        if point_cloud.ndim != 3:
            raise ValueError(f"data/point_cloud in {zarr_path!r} must be (T, N, C); got {point_cloud.shape}")
        n_channels = point_cloud.shape[-1]
        if use_rgb and n_channels < 6:
            raise ValueError(f"use_rgb=True but data/point_cloud in {zarr_path!r} has only {n_channels} "
                             "channels (xyz); convert with rgb enabled or set use_rgb=False")
        keep_channels = 3 if use_rgb is False else n_channels
        if translate_xy < 0:
            raise ValueError(f"dataset.translate_xy must be >= 0 (metres); got {translate_xy}")
        self.translate_xy = float(translate_xy)

        self.zarr_path = str(zarr_path)
        self.horizon = horizon
        self.pad_before = pad_before
        self.pad_after = pad_after
        self.attrs: Dict = dict(buffer.attrs)
        self.episode_ends = buffer.episode_ends
        self.data: Dict[str, np.ndarray] = {
            "point_cloud": np.asarray(point_cloud[:, :, :keep_channels], dtype=np.float32),
            "agent_pos": np.asarray(buffer["agent_pos"][:], dtype=np.float32),
            "action": np.asarray(buffer["action"][:], dtype=np.float32),
        }

        self.val_mask, self.train_mask = train_val_masks(len(self.episode_ends), val_ratio, seed, max_train_episodes)
        self.sampler = self._make_sampler(self.train_mask)
        if len(self.sampler) == 0:
            lengths = np.diff(self.episode_ends, prepend=0)[self.train_mask]
            raise ValueError(f"no training windows in {zarr_path!r}: {int(self.train_mask.sum())} training "
                             f"episodes of lengths {lengths.tolist()}; each needs at least "
                             f"horizon - pad_before - pad_after = {horizon - pad_before - pad_after} steps")

    def _make_sampler(self, episode_mask: np.ndarray) -> SequenceSampler:
        return SequenceSampler(self.episode_ends, self.horizon, self.pad_before, self.pad_after,
                               episode_mask=episode_mask)

    @property
    def meta(self) -> DatasetMeta:
        return DatasetMeta(n_points=self.data["point_cloud"].shape[1],
                           point_dim=self.data["point_cloud"].shape[2],
                           action_dim=self.data["action"].shape[1],
                           agent_pos_dim=self.data["agent_pos"].shape[1])

    def get_validation_dataset(self) -> "PointCloudDataset":
        """Same data (shared, not copied), windows from the validation episodes only; empty when
        ``val_ratio`` was 0 or there is a single episode."""
        val = copy.copy(self)
        val.sampler = self._make_sampler(self.val_mask)
        val.translate_xy = 0.0
        return val

    def get_normalizer(self, normalizer_cls: Type[Normalizer] = LinearNormalizer) -> Normalizer:
        """Fit on every step of the training episodes: 'limits' for action and agent_pos (to
        [-1, 1]), 'identity' for point_cloud (as DP3/ManiFlow: xyz already in metres near 0).
        ``normalizer_cls``: the policy's normalizer class (its state layout), e.g. the
        ``EquidiffNormalizer`` of ``ManiFlowTransformerPointcloudPolicy``."""
        step_mask = np.repeat(self.train_mask, np.diff(self.episode_ends, prepend=0))
        return normalizer_cls.fit(
            {"action": self.data["action"][step_mask],
             "agent_pos": self.data["agent_pos"][step_mask],
             # identity only needs the channel count; avoid copying the whole cloud array.
             "point_cloud": self.data["point_cloud"][:1]},
            modes={"point_cloud": "identity"})

    def __len__(self) -> int:
        return len(self.sampler)

    def __getitem__(self, idx: int) -> Dict:
        window = self.sampler.sample_sequence(self.data, idx)
        if self.translate_xy > 0:
            window = self._translated(window)
        return {"obs": {"point_cloud": torch.from_numpy(window["point_cloud"]),
                        "agent_pos": torch.from_numpy(window["agent_pos"])},
                "action": torch.from_numpy(window["action"])}

    def _translated(self, window: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """The window with one random horizontal offset (x, y) added to every position it holds: cloud
        ``(horizon, N, C)`` channels 0-1, ``agent_pos`` and ``action`` ``(horizon, D)`` entries 0-1. Drawn from
        torch's RNG, so ``training.seed`` fixes it. In place: ``sample_sequence`` returns fresh copies."""
        offset = ((torch.rand(2) * 2 - 1) * self.translate_xy).numpy().astype(np.float32)
        for key in ("point_cloud", "agent_pos", "action"):
            window[key][..., :2] += offset
        return window

    def __repr__(self) -> str:
        return (f"PointCloudDataset({self.zarr_path!r}, windows={len(self)}, "
                f"train_episodes={int(self.train_mask.sum())}, val_episodes={int(self.val_mask.sum())}, "
                f"meta={self.meta})")
