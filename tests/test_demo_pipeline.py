"""End-to-end README pipeline, small: scripted demos (hdf5) -> point-cloud zarr -> BC dataset,
run through the real entry points as subprocesses, plus their error exits."""
import json
import pathlib
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
import zarr
from scipy.spatial.transform import Rotation

from equi_diffpo.dataset.pointcloud_dataset import PointCloudDataset

torch.set_num_threads(1)

REPO = pathlib.Path(__file__).resolve().parents[1]
N_DEMOS, N_POINTS, HORIZON = 2, 256, 16


def run_script(script: str, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / script), *overrides], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipeline")
    hdf5, zarr_path = tmp / "d.hdf5", tmp / "d.zarr"
    gen = run_script("generate_demos.py", "task_name=lift_d0", f"n_demos={N_DEMOS}", f"output={hdf5}",
                     f"hydra.run.dir={tmp / 'h_gen'}")
    assert gen.returncode == 0, gen.stderr[-3000:]
    conv = run_script("convert_to_pointcloud.py", "task_name=lift_d0", f"input={hdf5}", f"output={zarr_path}",
                      f"task.point_cloud.n_points={N_POINTS}", f"hydra.run.dir={tmp / 'h_conv'}")
    assert conv.returncode == 0, conv.stderr[-3000:]
    return hdf5, zarr_path


def test_demo_file_has_robomimic_layout(pipeline):
    hdf5, _ = pipeline
    with h5py.File(hdf5, "r") as f:
        data = f["data"]
        env_args = json.loads(data.attrs["env_args"])
        assert env_args["env_name"] == "Lift"
        assert env_args["env_kwargs"]["controller_configs"]["body_parts"]["right"]["input_type"] == "absolute"
        assert sorted(data.keys()) == [f"demo_{i}" for i in range(N_DEMOS)]
        lengths = [int(data[f"demo_{i}"].attrs["num_samples"]) for i in range(N_DEMOS)]
        assert int(data.attrs["total"]) == sum(lengths)
        demo = data["demo_0"]
        assert {"actions", "states", "rewards", "dones", "obs"} <= set(demo.keys())
        T = lengths[0]
        assert demo["actions"].shape == (T, 7) and demo["states"].shape[0] == T
        assert demo["rewards"].shape == (T,) and demo["dones"].shape == (T,)
        assert demo["dones"][-1] == 1 and demo["rewards"][-1] == 1.0        # kept demos end in success
        assert demo["obs/robot0_eef_pos"].shape == (T, 3)
        assert "<mujoco" in demo.attrs["model_file"]


def test_zarr_replays_the_demos(pipeline):
    hdf5, zarr_path = pipeline
    root = zarr.open(str(zarr_path), mode="r")
    with h5py.File(hdf5, "r") as f:
        demos = [f[f"data/demo_{i}"] for i in range(N_DEMOS)]
        lengths = [len(d["actions"]) for d in demos]
        np.testing.assert_array_equal(root["meta/episode_ends"][:], np.cumsum(lengths))
        assert root["data/point_cloud"].shape == (sum(lengths), N_POINTS, 3)
        actions = np.concatenate([d["actions"][()] for d in demos])
        eef_pos = np.concatenate([d["obs/robot0_eef_pos"][()] for d in demos])
        gripper = np.concatenate([d["obs/robot0_gripper_qpos"][()] for d in demos])
        quat = np.concatenate([d["obs/robot0_eef_quat_site"][()] for d in demos])

    action = root["data/action"][:]
    assert action.shape == (sum(lengths), 10)
    np.testing.assert_allclose(action[:, :3], actions[:, :3], atol=1e-6)
    np.testing.assert_allclose(action[:, 9], actions[:, 6], atol=1e-6)
    rot = Rotation.from_rotvec(actions[:, 3:6]).as_matrix()
    np.testing.assert_allclose(action[:, 3:9], np.concatenate([rot[:, :, 0], rot[:, :, 1]], axis=1), atol=1e-5)
    # Replayed states reproduce the recorded low-dim obs (to MuJoCo's one-substep obs lag).
    agent_pos = root["data/agent_pos"][:]
    np.testing.assert_allclose(agent_pos[:, :3], eef_pos, atol=2e-3)
    np.testing.assert_allclose(agent_pos[:, 7:9], gripper, atol=2e-3)
    assert np.all(np.abs(np.sum(agent_pos[:, 3:7] * quat, axis=1)) > 0.999)    # same orientation (q ~ -q)
    assert root.attrs["task_name"] == "lift_d0" and root.attrs["point_cloud"]["source"] == "mesh"


def test_dataset_windows_have_policy_shapes(pipeline):
    _, zarr_path = pipeline
    dataset = PointCloudDataset(str(zarr_path), horizon=HORIZON, val_ratio=0.0)
    assert len(dataset) > 0
    sample = dataset[len(dataset) // 2]
    assert sample["obs"]["point_cloud"].shape == (HORIZON, N_POINTS, 3)
    assert sample["obs"]["agent_pos"].shape == (HORIZON, 9)
    assert sample["action"].shape == (HORIZON, 10)
    assert sample["obs"]["point_cloud"].dtype == torch.float32


def test_converter_rejects_missing_and_corrupt_inputs(tmp_path):
    corrupt = tmp_path / "corrupt.hdf5"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    for path in (tmp_path / "missing.hdf5", corrupt):
        result = run_script("convert_to_pointcloud.py", "task_name=lift_d0", f"input={path}",
                            f"output={tmp_path / 'out.zarr'}", f"hydra.run.dir={tmp_path / 'h'}")
        assert result.returncode != 0
        assert str(path) in result.stdout + result.stderr
        assert not (tmp_path / "out.zarr").exists()


def test_unknown_task_name_exits_listing_valid_names(tmp_path):
    result = run_script("convert_to_pointcloud.py", "task_name=lift_d9", f"hydra.run.dir={tmp_path / 'h'}")
    assert result.returncode != 0
    assert "lift_d9" in result.stderr and "lift_d0" in result.stderr and "stack_d0" in result.stderr
