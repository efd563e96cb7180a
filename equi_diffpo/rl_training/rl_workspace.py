"""RL workspace: pretrained checkpoint -> PPO fine-tuning loop (collect -> GAE -> update -> log).

Saved state (``<run_dir>/checkpoints/{latest,epoch_XXXX}.ckpt``, atomic): the fine-tuned base
policy as ``model`` (so ``scripts/eval_policy.py`` loads it like a BC checkpoint), the RL policy
(base + noise head), critic, PPO optimizers/schedulers, reward scaler, cfg, epoch and env-step
counter. ``training.resume=true`` (default) continues from ``latest.ckpt`` in the run dir.

The pretrained policy is either ManiFlow policy (U-Net or DiT-X, see :mod:`equi_diffpo.policy.rl_policy_base`).
A checkpoint of the original ManiFlow code acts in ``task_name``'s env with the original's observation
pipeline (merged into ``task``, so this run's checkpoints record it) and needs ``time_convention=...``.
"""
from __future__ import annotations

import time
from typing import Any, Dict, Optional

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from tqdm import tqdm

from equi_diffpo.common.checkpoint_io import CheckpointError, check_policy_config, load_policy
from equi_diffpo.common.config_checks import RL_RULES, check_config, check_minibatch_fits
from equi_diffpo.common.distributed import DistInfo, broadcast_module, cleanup_distributed, init_distributed
from equi_diffpo.common.hydra_cli import with_original_observations, written_by_original_code
from equi_diffpo.common.interrupt import InterruptGuard, raise_if_interrupted
from equi_diffpo.common.run_logger import RunLogger
from equi_diffpo.common.threads import torch_threads
from equi_diffpo.env_runner.pointcloud_runner import PointCloudEnvRunner
from equi_diffpo.policy.rl_policy_factory import build_rl_policy
from equi_diffpo.rl_training.chunk_q_trainer import ChunkQConfig, ChunkQTrainer
from equi_diffpo.rl_training.critic import build_critic
from equi_diffpo.rl_training.ppo_trainer import PPOBatch, PPOConfig, PPOTrainer, compute_gae
from equi_diffpo.rl_training.reward_scaling import RunningRewardScaler
from equi_diffpo.rl_training.rl_rollout_collector import RLRolloutCollector, RolloutBatch
from equi_diffpo.workspace.base_workspace import BaseWorkspace, resolve_device, set_seed


def check_checkpoint_task(ckpt_cfg: DictConfig, cfg: DictConfig, path: str) -> None:
    """Demos, BC and RL must share task and point-cloud source: say which key differs."""
    ckpt_task = ckpt_cfg.get("task", {})
    problems = []
    if ckpt_task.get("name") not in (None, cfg.task.name):
        problems.append(f"task_name: checkpoint {ckpt_task.get('name')!r} vs requested {cfg.task.name!r}")
    ckpt_source = ckpt_task.get("point_cloud", {}).get("source")
    if ckpt_source not in (None, cfg.task.point_cloud.source):
        problems.append(f"task.point_cloud.source: checkpoint {ckpt_source!r} vs requested {cfg.task.point_cloud.source!r}")
    if problems:
        raise CheckpointError(f"checkpoint {path!r} does not match this run:\n  " + "\n  ".join(problems))


def rollout_to_ppo_batch(rollout: RolloutBatch, rewards: np.ndarray, gamma: float, gae_lambda: float) -> PPOBatch:
    """GAE over the collected episodes, packed as torch tensors for the trainer."""
    t = lambda x: torch.as_tensor(x, dtype=torch.float32)  # noqa: E731
    gae = compute_gae(t(rewards), t(rollout.values), t(rollout.next_values), t(rollout.terminated),
                      t(rollout.episode_end), gamma, gae_lambda)
    return PPOBatch(obs={k: t(v) for k, v in rollout.obs.items()}, chains=t(rollout.chains),
                    log_probs=t(rollout.log_probs), values=t(rollout.values),
                    advantages=gae.advantages, returns=gae.returns,
                    cond=None if rollout.cond is None else t(rollout.cond))


class RLWorkspace(BaseWorkspace):
    pickle_keys = ("global_step", "epoch", "env_steps", "start_success")

    def __init__(self, cfg: DictConfig, output_dir: Optional[str] = None):
        check_config(cfg, RL_RULES)   # before anything is loaded or built
        super().__init__(cfg, output_dir)
        self.device = resolve_device(cfg.training.device)
        self.dist: DistInfo = init_distributed(self.device)
        if self.dist.world_size > 1 and self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", self.dist.local_rank)
        set_seed(cfg.training.seed + self.dist.rank)
        self.env_steps = 0
        self.start_success: Optional[float] = None   # validation success before RL (kept on resume)
        base, ckpt_cfg, _ = load_policy(cfg.pretrained_policy_path, self.device, time_convention=cfg.time_convention)
        if written_by_original_code(ckpt_cfg):   # its task is not ours: act in task_name's env, as it observed
            with open_dict(cfg):
                cfg.task = with_original_observations(cfg.task)
            print(f"original ManiFlow checkpoint: acting in {cfg.task.name} with its observation pipeline "
                  "(task/point_cloud/maniflow_original)")
        else:
            check_checkpoint_task(ckpt_cfg, cfg, cfg.pretrained_policy_path)
        task = cfg.task
        check_policy_config(base.task_dims(), {"point_dim": task.point_dim, "agent_pos_dim": task.agent_pos_dim,
                                               "action_dim": task.action_dim}, cfg.pretrained_policy_path)
        check_minibatch_fits(cfg, base.n_action_steps)
        self.model = base
        self.pretrained_policy_cfg = OmegaConf.to_container(ckpt_cfg.policy, resolve=True)
        self.rl_policy = build_rl_policy(base, cfg.rl_policy).to(self.device)
        # Policy-gradient noise on the point-cloud features can wreck a pretrained encoder:
        # by default PPO tunes the velocity net and noise head only.
        base.obs_encoder.requires_grad_(bool(cfg.rl_training.finetune_obs_encoder))
        self.critic = build_critic(cfg.critic, self.rl_policy, base, task, base.n_obs_steps).to(self.device)
        broadcast_module(self.rl_policy)
        broadcast_module(self.critic)
        # The cosine/linear LR decay runs over the whole run; given before PPOConfig checks the schedule.
        ppo_cfg = PPOConfig.from_dict({**OmegaConf.to_container(cfg.rl_training.ppo_trainer, resolve=True),
                                       "total_epochs": cfg.rl_training.num_epochs})
        # Off-policy methods (rl_policy=qselect) learn a chunk critic from a replay instead of PPO's update.
        self.off_policy = bool(getattr(self.rl_policy, "off_policy", False))
        if self.off_policy:
            self.trainer = ChunkQTrainer(self.rl_policy, ChunkQConfig.from_dict(cfg.rl_training.get("chunk_q", {})))
        else:
            self.trainer = PPOTrainer(self.rl_policy, self.critic, ppo_cfg)
        self.reward_scaler = (RunningRewardScaler(ppo_cfg.gamma) if cfg.rl_training.reward_scaling and not self.off_policy
                              else None)
        self.ppo_cfg = ppo_cfg

    # ------------------------------------------------------------------ pieces
    def make_collector(self) -> RLRolloutCollector:
        rc = self.cfg.rl_training.rollout_collector
        return RLRolloutCollector(self.cfg.task, self.output_dir, n_episodes_per_batch=rc.n_episodes_per_batch,
                                  n_envs=rc.n_envs, max_episode_steps=rc.max_episode_steps,
                                  render_episodes=rc.render_episodes if self.dist.is_main else 0,
                                  render_size=rc.render_size, n_obs_steps=self.model.n_obs_steps,
                                  seed=self.cfg.training.seed * 7919 + self.epoch * 104729 + self.dist.rank, vec_mode=rc.vec_mode,
                                  overlap=rc.overlap)

    def make_val_runner(self) -> PointCloudEnvRunner:
        rc = self.cfg.rl_training.rollout_collector
        return PointCloudEnvRunner(self.cfg.task, self.output_dir, n_episodes=self.cfg.rl_training.n_val_episodes,
                                   n_envs=rc.n_envs, n_videos=0, max_episode_steps=rc.max_episode_steps,
                                   n_obs_steps=self.model.n_obs_steps, vec_mode=rc.vec_mode, overlap=rc.overlap)

    def checkpoint_payload(self) -> Dict[str, Any]:
        """The base payload, its cfg with ``policy`` = the architecture being trained: the pretrained checkpoint's
        policy config plus what RL added to it (noise prior, residual head, flow sampling), so
        ``load_policy`` rebuilds it. The run's own cfg (composed from the RL yaml) has no ``policy`` key."""
        payload = super().checkpoint_payload()
        cfg = OmegaConf.create(OmegaConf.to_container(self.cfg, resolve=True))
        cfg.policy = {**self.pretrained_policy_cfg, **self.model.get_policy_config()}
        return {**payload, "cfg": cfg}

    def ppo_update(self, rollout: RolloutBatch) -> Dict[str, float]:
        """GAE over the batch, then one PPO update of policy and critic."""
        rewards = self.reward_scaler(rollout.rewards, rollout.episode_end) if self.reward_scaler else rollout.rewards
        batch = rollout_to_ppo_batch(rollout, rewards, self.ppo_cfg.gamma, self.ppo_cfg.gae_lambda).to(self.device)
        if getattr(self.critic, "needs_input_stats", False):   # critic.encoder=privileged: once, on the first batch
            self.critic.fit_input_stats(batch.obs)
            broadcast_module(self.critic)                        # every rank keeps rank 0's statistics
        self.rl_policy.train()
        self.critic.train()
        stats = self.trainer.update(batch, self.epoch)
        self.trainer.scheduler_step()
        return stats.as_dict()

    def train_epoch(self, collector: RLRolloutCollector) -> Dict[str, Any]:
        """One RL epoch: collect a batch of whole episodes, then one PPO update (or the off-policy critic's steps)."""
        rollout = collector.collect(self.rl_policy, self.critic, tag=f"rollout{self.epoch:04d}")
        start = time.time()
        with torch_threads(int(self.cfg.rl_training.get("update_threads") or torch.get_num_threads())):
            stats = self.trainer.update(rollout) if self.off_policy else self.ppo_update(rollout)
        update_seconds = time.time() - start
        self.env_steps += rollout.env_steps * self.dist.world_size
        self.global_step += 1
        metrics: Dict[str, Any] = {**rollout.metrics(), **stats, **self.rl_policy.diagnostics(),
                                   "perf/update_seconds": update_seconds,
                                   "perf/env_steps": self.env_steps, "charts/epoch": self.epoch,
                                   "charts/SPS": rollout.env_steps / (rollout.seconds + update_seconds)}
        metrics["video_paths"] = rollout.video_paths
        return metrics

    def validate(self, runner: PointCloudEnvRunner) -> Dict[str, Any]:
        """Deterministic flow (no chain noise) success rate on fixed evaluation seeds."""
        metrics = runner.run(self.model, tag=f"val{self.epoch:04d}")
        return {k: v for k, v in metrics.items() if k.startswith("eval/")}

    # ------------------------------------------------------------------ loop
    def run(self) -> Dict[str, Any]:
        cfg, rl = self.cfg, self.cfg.rl_training
        resumed = self.resume()
        if resumed:
            print(f"resumed from {resumed} at epoch {self.epoch} ({self.env_steps} env steps)")
        main = self.dist.is_main
        logger = RunLogger(self.output_dir, cfg.logging, cfg, enabled=main)
        collector = self.make_collector()
        runner = self.make_val_runner() if main and rl.val_every else None
        metrics: Dict[str, Any] = {}
        with InterruptGuard():
            try:
                if runner is not None and self.epoch == 0:
                    metrics = self.validate(runner)
                    logger.log(metrics, step=self.env_steps)
                    self.start_success = metrics["eval/success_rate"]
                    print(f"before RL: success {self.start_success:.2f} over {rl.n_val_episodes} episodes")
                bar = tqdm(range(self.epoch, rl.num_epochs), desc="RL epochs", disable=not main)
                for _ in bar:
                    raise_if_interrupted()
                    metrics = self.train_epoch(collector)
                    self.epoch += 1
                    last = self.epoch == rl.num_epochs
                    if runner is not None and (self.epoch % rl.val_every == 0 or last):
                        metrics.update(self.validate(runner))
                    logger.log(metrics, step=self.env_steps)
                    bar.set_postfix(success=f"{metrics['charts/success_rate']:.2f}", steps=self.env_steps)
                    if main and rl.checkpoint_every and (self.epoch % rl.checkpoint_every == 0 or last):
                        self.save_checkpoint()
                        self.save_checkpoint(f"epoch_{self.epoch:04d}")
                if "eval/success_rate" in metrics and self.start_success is not None:
                    print(f"{cfg.task.name}: success before RL {self.start_success:.2f} -> after {metrics['eval/success_rate']:.2f} "
                          f"({rl.n_val_episodes} episodes, seeds {runner.seed}+; {self.env_steps} env steps) | {self.output_dir}")
            except KeyboardInterrupt:
                if main:
                    print(f"\ninterrupted: saved {self.save_checkpoint()}; rerun with hydra.run.dir={self.output_dir} to resume")
                raise
            except FloatingPointError as err:
                raise FloatingPointError(f"{err}\nlast good checkpoint: {self.latest_checkpoint()}") from err
            finally:
                collector.close()
                if runner is not None:
                    runner.close()
                logger.finish()
                cleanup_distributed()
        return metrics
