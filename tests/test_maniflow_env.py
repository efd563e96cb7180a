"""Original-ManiFlow conventions at the boundary with our pipeline, and BC/eval with the DiT-X policy.

* state: our ``agent_pos`` holds the grip-site quaternion; the original's ``robot0_eef_quat`` is the
  hand body's (robosuite <= 1.4 key, still in 1.5): the conversion is checked against robosuite itself.
* actions: rot6d rows (the original's data) -> our columns.
* ``policy=maniflow_ditx`` trains in the BC workspace; ``eval_policy.py`` evaluates an original checkpoint.
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from conftest import PYTHON, REPO_ROOT, TINY_POLICY, bc_overrides, compose_cfg
from equi_diffpo.common.checkpoint_io import load_payload, load_policy
from equi_diffpo.env.rotation import rot6d_rows_to_columns
from equi_diffpo.policy.maniflow.maniflow_pointcloud_policy import agent_pos_to_robosuite_state

TINY_DITX = ["policy=maniflow_ditx", "policy.n_layer=1", "policy.n_head=2", "policy.n_emb=16",
             "policy.diffusion_timestep_embed_dim=8", "policy.diffusion_target_t_embed_dim=8",
             "policy.encoder_output_dim=16"]


def test_agent_pos_quaternion_becomes_robosuites_eef_quat():
    from equi_diffpo.env.robosuite_env import RobosuitePointCloudEnv

    env = RobosuitePointCloudEnv("lift_d0", point_cloud={"source": "mesh", "n_points": 16, "presample_points": 256},
                                 fast_control=False)
    rng = np.random.default_rng(0)
    try:
        obs = env.reset(seed=0)
        for _ in range(12):
            state = agent_pos_to_robosuite_state(torch.from_numpy(obs["agent_pos"]).double())
            np.testing.assert_allclose(state["robot0_eef_quat"].numpy(), env.raw_obs["robot0_eef_quat"], atol=1e-5)
            np.testing.assert_allclose(state["robot0_eef_pos"].numpy(), env.raw_obs["robot0_eef_pos"], atol=1e-6)
            np.testing.assert_allclose(state["robot0_gripper_qpos"].numpy(), env.raw_obs["robot0_gripper_qpos"], atol=1e-6)
            site = Rotation.from_quat(env.raw_obs["robot0_eef_quat_site"])
            target = (site * Rotation.from_rotvec(rng.normal(0, 0.3, 3))).as_rotvec()
            obs, *_ = env.step_env_action(np.concatenate([env.raw_obs["robot0_eef_pos"] + rng.normal(0, 0.03, 3),
                                                          target, [rng.choice([-1.0, 1.0])]]))
    finally:
        env.close()


def test_rot6d_rows_become_columns():
    mats = Rotation.random(5, random_state=0).as_matrix()
    rows = np.concatenate([np.zeros((5, 3)), mats[:, 0, :], mats[:, 1, :], np.ones((5, 1))], axis=-1)
    cols = rot6d_rows_to_columns(rows)
    np.testing.assert_allclose(cols[:, 3:9], np.concatenate([mats[:, :, 0], mats[:, :, 1]], -1), atol=1e-12)
    np.testing.assert_array_equal(cols[:, [0, 1, 2, 9]], rows[:, [0, 1, 2, 9]])


def test_bc_trains_the_ditx_policy(tiny_dataset, tmp_path):
    from equi_diffpo.workspace.train_maniflow_workspace import TrainManiFlowWorkspace

    overrides = [o for o in bc_overrides(tiny_dataset, max_train_steps=3, checkpoint_every=1) if o not in TINY_POLICY]
    workspace = TrainManiFlowWorkspace(compose_cfg("train_maniflow_pointcloud", overrides + TINY_DITX), str(tmp_path))
    metrics = workspace.run()
    assert np.isfinite(metrics["train/loss"]) and workspace.global_step == 3
    path = os.path.join(tmp_path, "checkpoints", "latest.ckpt")
    assert "normalizer.params_dict.agent_pos.input_stats.max" in load_payload(path)["state_dicts"]["ema_model"]
    policy, cfg, _ = load_policy(path)
    assert type(policy).__name__ == "ManiFlowTransformerPointcloudPolicy" and cfg.policy.time_convention == "t0_noise_t1_data"
    obs = {"point_cloud": torch.rand(1, 2, 64, 3), "agent_pos": torch.rand(1, 2, 9)}
    assert policy.predict_action(obs)["action"].shape == (1, 8, 10)


def _eval(args, tmp_path):
    import subprocess
    env = dict(os.environ, MUJOCO_GL="egl", OMP_NUM_THREADS="1", TMPDIR=str(tmp_path))
    return subprocess.run([PYTHON, "scripts/eval_policy.py", *args, f"hydra.run.dir={tmp_path / 'hydra'}"], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=300)


def test_eval_policy_runs_an_original_checkpoint_in_our_env(original_checkpoint, tmp_path):
    """Original obs pipeline (4 depth cameras + colour, 1024 points); one chunk of one episode."""
    out = tmp_path / "eval"
    proc = _eval([f"checkpoint={original_checkpoint}", "task_name=stack_d0", "time_convention=t0_noise_t1_data",
                  "n_episodes=1", "n_envs=1", "n_videos=0", "max_episode_steps=8", "vec_mode=inline",
                  f"output_dir={out}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "eval.json").read_text())
    assert result["task_name"] == "stack_d0" and result["eval/mean_length"] == 8

