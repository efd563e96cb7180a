"""Success rate, mean return/length and mp4 videos for a BC or RL checkpoint.

    python scripts/eval_policy.py checkpoint=data/checkpoints/lift_d0_default.ckpt n_episodes=50
    python scripts/eval_policy.py checkpoint=<original ManiFlow .ckpt> task_name=stack_d0 time_convention=t0_noise_t1_data
Writes ``eval.json`` (metrics + per-episode results) and videos to ``output_dir``; with
``logging.mode=offline|online`` the metrics and videos also go to wandb.
"""
import json
import os
import time

from omegaconf import DictConfig

from equi_diffpo.common.checkpoint_io import load_policy
from equi_diffpo.common.config_checks import EVAL_RULES, check_config
from equi_diffpo.common.errors import ConfigError
from equi_diffpo.common.hydra_cli import (hydra_entry_point, task_config, with_original_observations,
                                          written_by_original_code)
from equi_diffpo.common.run_logger import log_summary
from equi_diffpo.env_runner.pointcloud_runner import PointCloudEnvRunner
from equi_diffpo.workspace.base_workspace import resolve_device


@hydra_entry_point("eval_policy", task_group=False)   # the task comes from the checkpoint
def main(cfg: DictConfig) -> None:
    check_config(cfg, EVAL_RULES)
    policy, ckpt_cfg, payload = load_policy(cfg.checkpoint, resolve_device(cfg.device), time_convention=cfg.time_convention)
    if cfg.num_inference_steps:
        policy.num_inference_steps = int(cfg.num_inference_steps)
    task = ckpt_cfg.task
    if written_by_original_code(ckpt_cfg):       # its own task format
        if not cfg.task_name:
            raise ConfigError(f"checkpoint {cfg.checkpoint!r} was written by the original ManiFlow code: "
                              "pass task_name=<one of ours> to evaluate it in our envs")
        task = with_original_observations(task_config(cfg.task_name))
    elif cfg.task_name and cfg.task_name != task.name:
        raise ConfigError(f"checkpoint {cfg.checkpoint!r} was trained on {task.name!r}, not task_name={cfg.task_name!r}: "
                          f"drop task_name or pass a {cfg.task_name} checkpoint")
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
    with open(os.path.join(out, "eval.json"), "w") as f:   # first: the local record survives a wandb failure
        json.dump(metrics, f, indent=2)
    counters = payload.get("pickles", {})
    log_summary(cfg, metrics, step=counters.get("env_steps", counters.get("global_step", 0)), output_dir=out)
    print(f"{task.name}: success {metrics['eval/success_rate']:.2f} over {cfg.n_episodes} episodes | "
          f"return {metrics['eval/mean_return']:.2f} | length {metrics['eval/mean_length']:.1f} | "
          f"{policy.num_inference_steps} inference steps | {metrics['seconds']:.0f} s -> {out}/eval.json")


if __name__ == "__main__":
    main()
