"""Zarr episode storage, padded window sampling and the point-cloud BC dataset."""
from equi_diffpo.dataset.pointcloud_dataset import DatasetMeta, PointCloudDataset
from equi_diffpo.dataset.replay_buffer import ReplayBuffer
from equi_diffpo.dataset.sequence_sampler import SequenceSampler, downsample_mask, get_val_mask, train_val_masks

__all__ = ["DatasetMeta", "PointCloudDataset", "ReplayBuffer", "SequenceSampler",
           "downsample_mask", "get_val_mask", "train_val_masks"]
