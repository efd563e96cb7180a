"""Success rate, mean return/length and mp4 videos for a BC or RL checkpoint.

    python scripts/eval_policy.py checkpoint=data/checkpoints/lift_d0_default.ckpt n_episodes=50
    python scripts/eval_policy.py checkpoint=<original ManiFlow .ckpt> task_name=stack_d0 time_convention=t0_noise_t1_data
Writes ``eval.json`` (metrics + per-episode results) and videos to ``output_dir``.
"""
import json
import os
import time

import hydra
from omegaconf import DictConfig

from equi_diffpo.common.checkpoint_io import CheckpointError, load_policy
from equi_diffpo.common.hydra_cli import CONFIG_DIR, task_config
from equi_diffpo.env_runner.pointcloud_runner import PointCloudEnvRunner
from equi_diffpo.workspace.base_workspace import resolve_device


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="eval_policy")
def main(cfg: DictConfig) -> None:
    try:
        policy, ckpt_cfg, _ = load_policy(cfg.checkpoint, resolve_device(cfg.device), time_convention=cfg.time_convention)
    except CheckpointError as err:
        raise SystemExit(f"error: {err}") from err
    if cfg.num_inference_steps:
        policy.num_inference_steps = int(cfg.num_inference_steps)
    task = ckpt_cfg.task
    if "point_cloud" not in task:       # written by the original ManiFlow code: its own task format
        if not cfg.task_name:
            raise SystemExit("error: this checkpoint was written by the original ManiFlow code; "
                             "pass task_name=<one of ours> to evaluate it in our envs")
        task = task_config(cfg.task_name, ["+task/point_cloud=maniflow_original"])
    elif cfg.task_name and cfg.task_name != task.name:
        raise SystemExit(f"error: checkpoint was trained on {task.name!r}, not task_name={cfg.task_name!r}")
    out = cfg.output_dir or os.path.join(os.path.dirname(os.path.abspath(cfg.checkpoint)), "..",
                                         f"eval_{time.strftime('%Y%m%d_%H%M%S')}")
    runner = PointCloudEnvRunner(task, out, n_episodes=cfg.n_episodes, n_envs=cfg.n_envs, n_videos=cfg.n_videos,
                                 render_size=cfg.render_size, max_episode_steps=cfg.max_episode_steps,
                                 n_obs_steps=policy.n_obs_steps, seed=cfg.seed, vec_mode=cfg.vec_mode,
                                 noise_scale=cfg.noise_scale)
    start = time.time()
    try:
        metrics = runner.run(policy)
    finally:
        runner.close()
    metrics.update({"checkpoint": os.path.abspath(cfg.checkpoint), "task_name": task.name,
                    "num_inference_steps": policy.num_inference_steps, "noise_scale": cfg.noise_scale, "seconds": time.time() - start})
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "eval.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    print(f"{task.name}: success {metrics['eval/success_rate']:.2f} over {cfg.n_episodes} episodes | "
          f"return {metrics['eval/mean_return']:.2f} | length {metrics['eval/mean_length']:.1f} | "
          f"{policy.num_inference_steps} inference steps | {metrics['seconds']:.0f} s -> {out}/eval.json")


if __name__ == "__main__":
    main()
