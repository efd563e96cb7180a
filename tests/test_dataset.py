"""Replay buffer, padded window sampling, train/val split and normalizer fitting on a tiny zarr.

Expectations are written out by hand (frame lists, episode ends), not recomputed with the code
under test.
"""
import numpy as np
import pytest
import torch
import zarr
from numcodecs import Blosc

from equi_diffpo.dataset import (PointCloudDataset, ReplayBuffer, SequenceSampler, downsample_mask,
                                 get_val_mask)

torch.set_num_threads(1)

N_POINTS = 5
LENGTHS = (10, 12, 9)  # every episode >= horizon - pad_before - pad_after = 8 for the defaults


def make_episode(ep: int, length: int, n_channels: int = 6) -> dict:
    """Values encode (episode, step): action[t] = 100*ep + t + d (column d), so a window's origin
    can be read back from its numbers."""
    t = np.arange(length, dtype=np.float32)
    action = (100 * ep + t)[:, None] + np.arange(7, dtype=np.float32)
    agent_pos = (100 * ep + t)[:, None] * np.linspace(-1, 2, 9, dtype=np.float32)
    point_cloud = np.zeros((length, N_POINTS, n_channels), dtype=np.float32)
    point_cloud[:, :, 0] = (100 * ep + t)[:, None]
    point_cloud[:, :, 3:] = 0.5  # rgb channels, when present
    return {"point_cloud": point_cloud, "agent_pos": agent_pos, "action": action}


@pytest.fixture
def zarr_path(tmp_path):
    path = tmp_path / "demo.zarr"
    buffer = ReplayBuffer.create_empty(str(path))
    for ep, length in enumerate(LENGTHS):
        buffer.add_episode(make_episode(ep, length))
    buffer.attrs["point_cloud_source"] = "mesh"
    return str(path)


# ---------------------------------------------------------------------------- ReplayBuffer
def test_buffer_round_trip(zarr_path):
    buffer = ReplayBuffer.open(zarr_path)
    assert buffer.n_episodes == 3 and buffer.n_steps == 31
    assert buffer.episode_ends.tolist() == [10, 22, 31]
    assert buffer.episode_ends.dtype == np.int64
    assert buffer.keys() == ["action", "agent_pos", "point_cloud"]
    assert buffer["point_cloud"].shape == (31, N_POINTS, 6)
    assert buffer.attrs["point_cloud_source"] == "mesh"
    compressor = buffer["action"].compressor
    assert isinstance(compressor, Blosc) and compressor.cname == "lz4"
    episode = buffer.get_episode(1)
    assert episode["action"][:, 0].tolist() == list(range(100, 112))
    assert buffer.get_episode(-1)["action"][0, 0] == 200
    # the on-disk layout other tools (DP3/ManiFlow) read
    root = zarr.open_group(zarr_path, mode="r")
    assert root["meta/episode_ends"][:].tolist() == [10, 22, 31]
    assert root["data/agent_pos"].shape == (31, 9)


def test_in_memory_buffer_and_bad_episodes():
    buffer = ReplayBuffer.create_empty(None)
    buffer.add_episode({"a": np.zeros((2, 3)), "b": np.ones(2)})
    buffer.add_episode({"a": np.ones((3, 3)), "b": np.zeros(3)})
    assert buffer.episode_ends.tolist() == [2, 5]
    with pytest.raises(ValueError, match="differ in length"):
        buffer.add_episode({"a": np.zeros((2, 3)), "b": np.ones(3)})
    with pytest.raises(ValueError, match="keys"):
        buffer.add_episode({"a": np.zeros((2, 3))})
    with pytest.raises(ValueError, match="step shape"):
        buffer.add_episode({"a": np.zeros((2, 4)), "b": np.ones(2)})
    # rejected episodes left nothing behind
    assert buffer.n_steps == 5 and buffer["a"].shape == (5, 3) and buffer["b"].shape == (5,)


def test_open_errors(tmp_path, zarr_path):
    missing = tmp_path / "nope.zarr"
    with pytest.raises(FileNotFoundError, match="nope.zarr"):
        ReplayBuffer.open(str(missing))

    no_action = tmp_path / "no_action.zarr"
    buffer = ReplayBuffer.create_empty(str(no_action))
    episode = make_episode(0, 4)
    del episode["action"]
    buffer.add_episode(episode)
    with pytest.raises(ValueError, match=r"no data/action array in .*no_action\.zarr.*convert_to_pointcloud"):
        PointCloudDataset(str(no_action))

    not_a_buffer = tmp_path / "plain.zarr"
    zarr.group(store=zarr.DirectoryStore(str(not_a_buffer)))
    with pytest.raises(ValueError, match="plain.zarr"):
        ReplayBuffer.open(str(not_a_buffer))

    # an interrupted write: data longer than episode_ends claims
    root = zarr.open_group(zarr_path, mode="a")
    root["data/action"].append(np.zeros((1, 7), dtype=np.float32))
    with pytest.raises(ValueError, match="data/action"):
        ReplayBuffer.open(zarr_path)


# ---------------------------------------------------------------------------- SequenceSampler
def test_sampler_pads_with_episode_edge_frames():
    # episodes [0,1,2], [3..7], [8..11]; windows of 4, one frame of history, two of future padding
    sampler = SequenceSampler(np.array([3, 8, 12]), sequence_length=4, pad_before=1, pad_after=2)
    frames = {"x": np.arange(12), "y": np.arange(12)[:, None] * 10}
    windows = [sampler.sample_sequence(frames, i)["x"].tolist() for i in range(len(sampler))]
    assert windows == [
        [0, 0, 1, 2], [0, 1, 2, 2], [1, 2, 2, 2],
        [3, 3, 4, 5], [3, 4, 5, 6], [4, 5, 6, 7], [5, 6, 7, 7], [6, 7, 7, 7],
        [8, 8, 9, 10], [8, 9, 10, 11], [9, 10, 11, 11], [10, 11, 11, 11],
    ]
    assert sampler.sample_sequence(frames, 0)["y"].tolist() == [[0], [0], [10], [20]]


def test_sampler_mask_and_short_episodes():
    masked = SequenceSampler(np.array([3, 8, 12]), 4, 1, 2, episode_mask=np.array([False, True, False]))
    assert len(masked) == 5
    assert masked.sample_sequence({"x": np.arange(12)}, 0)["x"].tolist() == [3, 3, 4, 5]
    # a 3-step episode cannot fill 8 frames with at most 1 + 2 repeated ones
    assert len(SequenceSampler(np.array([3]), 8, 1, 2)) == 0


def test_val_mask_and_downsample():
    assert get_val_mask(3, 0.02, seed=0).sum() == 1  # tiny dataset still validates
    assert get_val_mask(1, 0.5, seed=0).sum() == 0  # the only episode stays for training
    assert get_val_mask(10, 0.0, seed=0).sum() == 0
    assert get_val_mask(10, 0.99, seed=0).sum() == 9  # at least one training episode
    assert get_val_mask(50, 0.2, seed=3).tolist() == get_val_mask(50, 0.2, seed=3).tolist()
    mask = np.array([True, False, True, True, False])
    small = downsample_mask(mask, 2, seed=0)
    assert small.sum() == 2 and not np.any(small & ~mask)
    assert downsample_mask(mask, None).tolist() == mask.tolist()


# ---------------------------------------------------------------------------- PointCloudDataset
def test_dataset_items_and_edge_padding(zarr_path):
    ds = PointCloudDataset(zarr_path, val_ratio=0.0)  # horizon 16, pad_before 1, pad_after 7
    # windows per episode: starts -1 .. L - 16 + 7  ->  L - 7
    assert len(ds) == (10 - 7) + (12 - 7) + (9 - 7)
    assert ds.meta.n_points == N_POINTS and ds.meta.point_dim == 6
    assert ds.meta.action_dim == 7 and ds.meta.agent_pos_dim == 9

    first = ds[0]
    assert first["obs"]["point_cloud"].shape == (16, N_POINTS, 6)
    assert first["obs"]["agent_pos"].shape == (16, 9)
    assert first["action"].shape == (16, 7)
    assert first["action"].dtype == torch.float32
    assert first["action"][:, 0].tolist() == [0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 9, 9, 9]
    assert first["obs"]["point_cloud"][:, 0, 0].tolist() == first["action"][:, 0].tolist()
    last_of_episode_0 = ds[2]
    assert last_of_episode_0["action"][:, 0].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9] + [9] * 7
    first_of_episode_1 = ds[3]
    assert first_of_episode_1["action"][:, 6].tolist() == [106, 106] + list(range(107, 118)) + [117] * 3

    # a sample may be changed in place without corrupting the dataset
    ds[4]["action"].zero_()
    assert ds[4]["action"][0, 0] == 100


def test_train_val_split_is_by_episode(zarr_path):
    train = PointCloudDataset(zarr_path, val_ratio=0.34, seed=1)
    val = train.get_validation_dataset()
    assert train.val_mask.sum() == 1 and train.train_mask.sum() == 2

    def episodes(ds):
        return {int(ds[i]["action"][0, 0]) // 100 for i in range(len(ds))}

    train_eps, val_eps = episodes(train), episodes(val)
    assert train_eps.isdisjoint(val_eps) and train_eps | val_eps == {0, 1, 2}
    assert len(train) + len(val) == sum(length - 7 for length in LENGTHS)

    limited = PointCloudDataset(zarr_path, val_ratio=0.34, seed=1, max_train_episodes=1)
    assert limited.train_mask.sum() == 1
    assert limited.val_mask.tolist() == train.val_mask.tolist()


def test_translate_xy_moves_every_position_of_a_training_window_alike(zarr_path):
    plain = PointCloudDataset(zarr_path, val_ratio=0.34, seed=1)
    moved = PointCloudDataset(zarr_path, val_ratio=0.34, seed=1, translate_xy=0.5)
    stored = {key: array.copy() for key, array in moved.data.items()}
    torch.manual_seed(0)
    offsets = []
    for i in range(len(plain)):
        a, b = plain[i], moved[i]
        offset = (b["action"][0, :2] - a["action"][0, :2]).numpy()
        offsets.append(offset)
        for before, after, size in ((a["action"], b["action"], 7), (a["obs"]["agent_pos"], b["obs"]["agent_pos"], 9),
                                    (a["obs"]["point_cloud"], b["obs"]["point_cloud"], 6)):
            shift = np.zeros(size, dtype=np.float32)
            shift[:2] = offset
            np.testing.assert_allclose((after - before).numpy(), np.broadcast_to(shift, after.shape), atol=1e-4)
    offsets = np.array(offsets)
    assert np.all(np.abs(offsets) <= 0.5) and len(np.unique(offsets[:, 0])) == len(plain)   # one draw per window
    for key, array in stored.items():                      # the shift never reaches the stored episodes
        np.testing.assert_array_equal(moved.data[key], array)
    val = moved.get_validation_dataset()
    assert val[0]["action"].tolist() == plain.get_validation_dataset()[0]["action"].tolist()   # never moved
    with pytest.raises(ValueError, match="translate_xy"):
        PointCloudDataset(zarr_path, translate_xy=-0.1)


def test_normalizer_maps_train_range_to_unit_box(zarr_path):
    ds = PointCloudDataset(zarr_path, val_ratio=0.34, seed=0)
    # the held-out episode has the largest values, so fitting on it too would shrink the range
    assert ds.val_mask.tolist() == [False, False, True]
    normalizer = ds.get_normalizer()
    train_eps = [0, 1]
    train_actions = np.concatenate([make_episode(ep, LENGTHS[ep])["action"] for ep in train_eps])
    normalized = normalizer["action"].normalize(torch.from_numpy(train_actions))
    assert torch.allclose(normalized.min(dim=0).values, -torch.ones(7), atol=1e-5)
    assert torch.allclose(normalized.max(dim=0).values, torch.ones(7), atol=1e-5)
    # column 0 spans [lo, hi] of the training steps only, so the midpoint maps to 0
    lo, hi = train_actions[:, 0].min(), train_actions[:, 0].max()
    mid = torch.full((1, 7), (lo + hi) / 2) + torch.arange(7.0)
    assert torch.allclose(normalizer["action"].normalize(mid), torch.zeros(1, 7), atol=1e-5)
    pos = normalizer["agent_pos"].normalize(torch.from_numpy(
        np.concatenate([make_episode(ep, LENGTHS[ep])["agent_pos"] for ep in train_eps])))
    assert torch.allclose(pos.min(dim=0).values, -torch.ones(9), atol=1e-5)
    assert torch.allclose(pos.max(dim=0).values, torch.ones(9), atol=1e-5)
    cloud = torch.randn(2, N_POINTS, 6)
    assert torch.equal(normalizer["point_cloud"].normalize(cloud), cloud)


def test_use_rgb(tmp_path, zarr_path):
    assert PointCloudDataset(zarr_path, val_ratio=0.0)[0]["obs"]["point_cloud"].shape[-1] == 6
    xyz = PointCloudDataset(zarr_path, val_ratio=0.0, use_rgb=False)
    assert xyz.meta.point_dim == 3 and xyz[0]["obs"]["point_cloud"].shape == (16, N_POINTS, 3)
    assert xyz[0]["obs"]["point_cloud"][1, 0].tolist() == [0.0, 0.0, 0.0]
    assert xyz[0]["obs"]["point_cloud"][2, 0, 0] == 1.0

    xyz_only = tmp_path / "xyz.zarr"
    buffer = ReplayBuffer.create_empty(str(xyz_only))
    buffer.add_episode(make_episode(0, 9, n_channels=3))
    with pytest.raises(ValueError, match="use_rgb"):
        PointCloudDataset(str(xyz_only), use_rgb=True)


def test_too_short_episodes_give_clear_error(tmp_path):
    path = tmp_path / "short.zarr"
    buffer = ReplayBuffer.create_empty(str(path))
    buffer.add_episode(make_episode(0, 5))
    with pytest.raises(ValueError, match="no training windows"):
        PointCloudDataset(str(path))
