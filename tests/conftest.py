"""Shared fixtures for the workspace, checkpoint, evaluation, RL and entry-point tests.

Everything is sized for a 2-core CPU shared with other jobs: a tiny policy, 64-point clouds,
16-step episodes. Configs are built with hydra's compose API from the real yaml files, so the
tests exercise the same keys users override on the command line. Two session fixtures are
expensive enough to share:

* ``tiny_dataset``: a synthetic zarr in the DP3/ManiFlow layout (4 episodes x 24 steps).
* ``tiny_bc_run``: :class:`TrainManiFlowWorkspace` really trained on it for ``BC_STEPS``
  optimizer steps; its ``latest.ckpt`` is "the tiny checkpoint" every RL/eval test starts from.
"""
from __future__ import annotations

import json
import lzma
import os
import pathlib
import shutil
import sys
from dataclasses import dataclass
from typing import Dict, List

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from equi_diffpo.common.hydra_cli import compose_config as compose_cfg  # noqa: E402,F401 (tests import it from here)
from equi_diffpo.dataset import ReplayBuffer  # noqa: E402

torch.set_num_threads(1)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
PYTHON = sys.executable
N_POINTS = 64
MAX_EPISODE_STEPS = 16
BC_STEPS = 60
BC_CHECKPOINT_EVERY = 5
# Workspace crop of the task yaml: synthetic clouds live where real ones would.
BOX_LO, BOX_HI = np.array([-0.5, -0.5, 0.805]), np.array([0.5, 0.5, 1.6])

# The tiny policy of the unit tests that build policies directly (no hydra), 7-d actions.
TINY_POLICY_KWARGS = dict(point_dim=3, agent_pos_dim=9, action_dim=7, horizon=8, n_action_steps=4, n_obs_steps=2,
                          num_inference_steps=2, encoder_output_dim=16, state_output_dim=8, pointnet_hidden=[16, 32],
                          down_dims=[16, 32], kernel_size=3, time_embed_dim=16, n_groups=4)


# The executed slice of a TINY_POLICY_KWARGS chunk (time indices n_obs_steps-1 : +n_action_steps).
TINY_EXEC = slice(TINY_POLICY_KWARGS["n_obs_steps"] - 1,
                  TINY_POLICY_KWARGS["n_obs_steps"] - 1 + TINY_POLICY_KWARGS["n_action_steps"])


def tiny_obs(batch: int) -> Dict[str, "torch.Tensor"]:
    """Random raw obs for the tiny policy, ``{'point_cloud': (B, 2, 20, 3), 'agent_pos': (B, 2, 9)}``, drawn
    after ``torch.manual_seed(0)`` so every test file sees the same ones."""
    torch.manual_seed(0)
    return {"point_cloud": torch.rand(batch, 2, 20, 3), "agent_pos": torch.rand(batch, 2, 9)}


def tiny_base_policy():
    """A ManiFlowPointcloudPolicy of ``TINY_POLICY_KWARGS`` with a normalizer fitted on random data
    (actions in [-1, 1], identity point clouds); draws from the global torch RNG."""
    from equi_diffpo.model.normalizer import LinearNormalizer
    from equi_diffpo.policy import ManiFlowPointcloudPolicy

    base = ManiFlowPointcloudPolicy(**TINY_POLICY_KWARGS)
    base.set_normalizer(LinearNormalizer.fit(
        {"action": torch.rand(50, 7) * 2 - 1, "agent_pos": torch.rand(50, 9), "point_cloud": torch.rand(50, 3)},
        modes={"point_cloud": "identity"}))
    return base


TINY_POLICY: List[str] = [
    "policy.pointnet_hidden=[16,32]", "policy.down_dims=[16,32]", "policy.encoder_output_dim=32",
    "policy.state_output_dim=16", "policy.time_embed_dim=16", "policy.n_groups=4", "policy.kernel_size=3",
]
TINY_TASK: List[str] = [
    f"task.point_cloud.n_points={N_POINTS}", f"task.max_episode_steps={MAX_EPISODE_STEPS}",
    "task.point_cloud.presample_points=2048",
]
# RL runs: tiny critic, inline envs, 2 short episodes per batch (at most 2 x 16 / 8 = 4 chunk
# steps, so minibatches of 4), nothing rendered.
TINY_RL: List[str] = TINY_TASK + [
    "critic.hidden=16",
    "rl_training.num_epochs=1", "rl_training.val_every=0", "rl_training.checkpoint_every=1",
    "rl_training.rollout_collector.n_episodes_per_batch=2", "rl_training.rollout_collector.n_envs=2",
    "rl_training.rollout_collector.vec_mode=inline", "rl_training.rollout_collector.render_episodes=0",
    f"rl_training.rollout_collector.max_episode_steps={MAX_EPISODE_STEPS}",
    "rl_training.ppo_trainer.critic_warmup_epochs=0", "rl_training.ppo_trainer.ppo_epochs=1",
    "rl_training.ppo_trainer.mini_batch_size=4", "logging.mode=disabled",
]


def bc_overrides(dataset: str, **training: object) -> List[str]:
    """Overrides for a tiny BC run on ``dataset``; ``training`` adds ``training.<key>=<value>``."""
    defaults = dict(max_train_steps=BC_STEPS, num_epochs=100, rollout_every=0, val_every=5,
                    checkpoint_every=BC_CHECKPOINT_EVERY, torch_threads=1)
    defaults.update(training)
    return (TINY_POLICY + TINY_TASK
            + [f"task.dataset_path={dataset}", "dataloader.batch_size=16", "optimizer.lr=1e-3",
               "logging.mode=disabled", "eval.vec_mode=inline"]
            + [f"training.{k}={'null' if v is None else v}" for k, v in defaults.items()])


def read_metrics(output_dir: str | os.PathLike) -> List[Dict[str, float]]:
    """Rows of ``<output_dir>/metrics.jsonl``."""
    with open(os.path.join(output_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_tiny_dataset(path: str | os.PathLike, n_episodes: int = 4, length: int = 24,
                       n_points: int = N_POINTS, point_dim: int = 3, seed: int = 0) -> str:
    """Synthetic demos: the eef moves on a straight line per episode, top-down orientation.

    point_cloud (T, N, point_dim) uniform in the crop box; agent_pos (T, 9) = pos + quat xyzw
    (x-axis flip = gripper down) + finger qpos; action (T, 10) = next pos + rot6d + gripper
    (open first half, closed second half). Actions are a simple function of the state, so BC
    loss has something to learn and executed actions stay near the robot's start pose.
    """
    rng = np.random.default_rng(seed)
    buffer = ReplayBuffer.create_empty(os.fspath(path))
    rot6d_down = np.array([1, 0, 0, 0, -1, 0], dtype=np.float32)  # first two columns of diag(1, -1, -1)
    for _ in range(n_episodes):
        start = np.array([-0.1, 0.0, 1.0]) + rng.uniform(-0.03, 0.03, 3)
        velocity = rng.uniform(-0.004, 0.004, 3)
        pos = start + velocity * np.arange(length + 1)[:, None]
        gripper = np.where(np.arange(length) < length // 2, -1.0, 1.0)[:, None]
        fingers = np.where(gripper > 0, 0.01, 0.04) * np.array([1.0, -1.0])
        agent_pos = np.concatenate([pos[:-1], np.tile([1.0, 0, 0, 0], (length, 1)), fingers], axis=1)
        action = np.concatenate([pos[1:], np.tile(rot6d_down, (length, 1)),
                                 gripper], axis=1)
        cloud = rng.uniform(BOX_LO, BOX_HI, (length, n_points, 3))
        if point_dim == 6:
            cloud = np.concatenate([cloud, rng.uniform(0, 1, (length, n_points, 3))], axis=-1)
        buffer.add_episode({"point_cloud": cloud.astype(np.float32), "agent_pos": agent_pos.astype(np.float32),
                            "action": action.astype(np.float32)})
    return os.fspath(path)


@dataclass
class TinyBCRun:
    """A finished tiny BC run: its folder, latest checkpoint and the dataset it trained on."""
    output_dir: str
    checkpoint: str
    dataset: str
    global_step: int
    epoch: int


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> str:
    return write_tiny_dataset(tmp_path_factory.mktemp("data") / "tiny.zarr")


@pytest.fixture(scope="session")
def tiny_bc_run(tmp_path_factory, tiny_dataset) -> TinyBCRun:
    from equi_diffpo.workspace.train_maniflow_workspace import TrainManiFlowWorkspace

    output_dir = str(tmp_path_factory.mktemp("bc_run"))
    workspace = TrainManiFlowWorkspace(compose_cfg("train_maniflow_pointcloud", bc_overrides(tiny_dataset)),
                                       output_dir=output_dir)
    workspace.run()
    torch.set_num_threads(1)
    return TinyBCRun(output_dir, os.path.join(output_dir, "checkpoints", "latest.ckpt"), tiny_dataset,
                     workspace.global_step, workspace.epoch)


@pytest.fixture(scope="session")
def original_checkpoint(tmp_path_factory) -> str:
    """Path of the small-config checkpoint written by the original ManiFlow code (decompressed fixture)."""
    path = tmp_path_factory.mktemp("original") / "latest.ckpt"
    with lzma.open(REPO_ROOT / "tests" / "fixtures" / "maniflow_original_tiny.ckpt.xz", "rb") as src, \
            open(path, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return str(path)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_bc_run) -> str:
    """Path of the tiny BC checkpoint (lift_d0, 64 points, 16-step episodes)."""
    return tiny_bc_run.checkpoint
