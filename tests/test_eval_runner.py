"""Evaluation runner on the real lift_d0 env with the tiny BC policy: metrics, per-episode
results and a playable mp4, with envs in worker processes as in real evaluation runs."""
from __future__ import annotations

import os

import imageio
import numpy as np
import torch

from conftest import MAX_EPISODE_STEPS
from equi_diffpo.common.checkpoint_io import load_policy
from equi_diffpo.env_runner.pointcloud_runner import PointCloudEnvRunner
from omegaconf import OmegaConf

torch.set_num_threads(1)

RENDER_SIZE = 128


def read_frames(path: str) -> np.ndarray:
    """Decode every frame with imageio's ffmpeg reader: (T, H, W, 3) uint8. (Iterate: the
    reader reports an unknown length as huge, so ``list(reader)`` would pre-allocate for it.)"""
    with imageio.get_reader(path, format="ffmpeg") as reader:
        return np.stack([frame for frame in reader.iter_data()])


def test_runner_metrics_and_video(tiny_checkpoint, tmp_path):
    policy, cfg, _ = load_policy(tiny_checkpoint)
    runner = PointCloudEnvRunner(cfg.task, str(tmp_path), n_episodes=2, n_envs=2, n_videos=1,
                                 render_size=RENDER_SIZE, max_episode_steps=MAX_EPISODE_STEPS,
                                 n_obs_steps=cfg.n_obs_steps, seed=100000, vec_mode="process")
    was_training = policy.training
    try:
        metrics = runner.run(policy, tag="test")
    finally:
        runner.close()

    assert metrics["eval/n_episodes"] == 2
    assert 0.0 <= metrics["eval/success_rate"] <= 1.0
    assert 0 < metrics["eval/mean_length"] <= MAX_EPISODE_STEPS
    episodes = metrics["episodes"]
    assert [e["seed"] for e in episodes] == [100000, 100001]
    assert all(1 <= e["length"] <= MAX_EPISODE_STEPS for e in episodes)
    # An episode stops early only by succeeding; otherwise it runs to the time limit.
    assert all(e["success"] or e["length"] == MAX_EPISODE_STEPS for e in episodes)
    assert metrics["eval/success_rate"] == np.mean([e["success"] for e in episodes])
    assert metrics["eval/mean_length"] == np.mean([e["length"] for e in episodes])

    assert len(metrics["video_paths"]) == 1
    video = metrics["video_paths"][0]
    assert video == os.path.join(str(tmp_path), "videos", "test_seed100000.mp4")
    frames = read_frames(video)
    # The reset frame plus one frame per executed env step.
    assert frames.shape == (episodes[0]["length"] + 1, RENDER_SIZE, RENDER_SIZE, 3)
    assert frames.shape[0] >= MAX_EPISODE_STEPS
    assert frames.std() > 1.0, "video frames are blank"
    assert policy.training is was_training, "the runner must restore the policy's train/eval mode"


def test_noise_scale_zero_starts_every_chunk_from_zero(tiny_checkpoint, tmp_path):
    policy, cfg, _ = load_policy(tiny_checkpoint)
    seen = []

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = policy
            self.noise_shape = policy.noise_shape

        def predict_action(self, obs, noise=None):
            seen.append(noise)
            return policy.predict_action(obs, noise)

    runner = PointCloudEnvRunner(cfg.task, str(tmp_path), n_episodes=1, n_envs=1, n_videos=0,
                                 max_episode_steps=MAX_EPISODE_STEPS, n_obs_steps=cfg.n_obs_steps,
                                 vec_mode="inline", noise_scale=0.0)
    try:
        runner.run(Recorder())
    finally:
        runner.close()
    assert seen and all(n is not None and n.abs().max() == 0 for n in seen)


def _episode_results(policy, task_cfg, out_dir: str, n_episodes: int, n_envs: int, vec_mode: str,
                     overlap: bool = False) -> list:
    runner = PointCloudEnvRunner(task_cfg, out_dir, n_episodes=n_episodes, n_envs=n_envs, n_videos=0,
                                 max_episode_steps=REPRO_EPISODE_STEPS, n_obs_steps=policy.n_obs_steps,
                                 seed=100000, vec_mode=vec_mode, overlap=overlap)
    try:
        return runner.run(policy)["episodes"]
    finally:
        runner.close()


REPRO_EPISODE_STEPS = 40


def test_evaluation_repeats_exactly_whatever_the_batching(tmp_path):
    """The shipped checkpoint (real policy, 512-point clouds) on the dense reward, whose return is a
    float that changes with any change of the trajectory: two runs agree episode by episode, the first
    N of 2N episodes are the N-episode run, 1 inline env gives what 2 worker processes give, and so does
    overlapping the 2 workers' steps with the policy instead of stepping them in lock-step."""
    policy, cfg, _ = load_policy(os.path.join(os.path.dirname(__file__), "..", "data", "checkpoints",
                                              "lift_d0_default.ckpt"))
    task = {**OmegaConf.to_container(cfg.task, resolve=True), "reward_shaping": True}
    four = _episode_results(policy, task, str(tmp_path), 4, 2, "process")
    again = _episode_results(policy, task, str(tmp_path), 4, 2, "process")
    two_inline = _episode_results(policy, task, str(tmp_path), 2, 1, "inline")
    overlapped = _episode_results(policy, task, str(tmp_path), 4, 2, "process", overlap=True)
    assert four == again == overlapped
    assert two_inline == four[:2]
    # The check can fail: episodes differ from each other (different seeds -> different trajectories).
    assert len({e["return"] for e in four}) == 4
