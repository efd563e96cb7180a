"""BC pretraining workspace: dataset -> ManiFlow policy (+EMA) -> checkpoints, val loss, rollouts.

Checkpoint selection: every ``training.rollout_every`` epochs (and after the last) the EMA policy is
rolled out on ``eval.n_episodes`` episodes from seed ``eval.seed``; the best success rate so far is
kept as ``best.ckpt`` (ties go to the later epoch). ``eval.seed`` defaults to 200000, disjoint from
``eval_policy.py``'s 100000+, so the success reported for ``best.ckpt`` is not measured on the very
episodes it was picked on.
"""
from __future__ import annotations

import copy
import math
import time
from typing import Any, Dict

import hydra
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader
from tqdm import tqdm

from equi_diffpo.common.config_checks import BC_RULES, check_config
from equi_diffpo.common.errors import ConfigError, input_errors_as_config_errors
from equi_diffpo.common.interrupt import InterruptGuard, raise_if_interrupted
from equi_diffpo.common.run_logger import RunLogger
from equi_diffpo.dataset.pointcloud_dataset import PointCloudDataset
from equi_diffpo.env_runner.pointcloud_runner import PointCloudEnvRunner
from equi_diffpo.model.ema import EMAModel
from equi_diffpo.workspace.base_workspace import BaseWorkspace, resolve_device, set_seed


def check_dataset_matches(dataset: PointCloudDataset, cfg: DictConfig) -> None:
    """The dataset's dims must be the policy's: name the config key to change otherwise. Both policy
    configs take the dims from ``task.*``; the U-Net's repeats them as ``policy.*``."""
    meta = dataset.meta
    for key, have in (("point_dim", meta.point_dim), ("agent_pos_dim", meta.agent_pos_dim), ("action_dim", meta.action_dim)):
        name, value = (f"policy.{key}", cfg.policy[key]) if key in cfg.policy else (f"task.{key}", cfg.task[key])
        if value != have:
            raise ConfigError(f"{name}={value} but dataset {cfg.dataset.zarr_path} has {have}: "
                              f"set task.{key}={have} (or regenerate the dataset)")


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch.to(device, non_blocking=True)


PRECISIONS = ("fp32", "bf16")


class TrainManiFlowWorkspace(BaseWorkspace):
    pickle_keys = ("global_step", "epoch", "best_success_rate")

    def __init__(self, cfg: DictConfig, output_dir: str | None = None):
        check_config(cfg, BC_RULES)
        super().__init__(cfg, output_dir)
        if cfg.training.precision not in PRECISIONS:
            raise ValueError(f"training.precision={cfg.training.precision!r} is not valid; use one of {', '.join(PRECISIONS)}")
        set_seed(cfg.training.seed)
        if cfg.training.torch_threads:
            torch.set_num_threads(int(cfg.training.torch_threads))
        self.device = resolve_device(cfg.training.device)
        self.best_success_rate = -1.0       # none evaluated yet
        self.model = hydra.utils.instantiate(cfg.policy)
        self.ema_model = copy.deepcopy(self.model)
        self.ema = EMAModel(self.ema_model, power=cfg.ema.power, max_value=cfg.ema.max_value)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.optimizer.lr,
                                           weight_decay=cfg.optimizer.weight_decay, betas=tuple(cfg.optimizer.betas))

    # ------------------------------------------------------------------ pieces
    def build_data(self) -> tuple[DataLoader, DataLoader]:
        """(train loader, validation loader) over ``cfg.dataset``; fits the normalizer into both models."""
        with input_errors_as_config_errors("dataset.zarr_path", FileNotFoundError, ValueError):  # the dataset's own checks
            dataset = PointCloudDataset(**self.cfg.dataset)
        check_dataset_matches(dataset, self.cfg)
        normalizer = dataset.get_normalizer(type(self.model.normalizer))
        self.model.set_normalizer(normalizer)
        self.ema_model.set_normalizer(copy.deepcopy(normalizer))
        loader = DataLoader(dataset, **self.cfg.dataloader, drop_last=len(dataset) > self.cfg.dataloader.batch_size)
        val_loader = DataLoader(dataset.get_validation_dataset(), batch_size=self.cfg.dataloader.batch_size)
        return loader, val_loader

    def _lr_lambda(self, total_steps: int):
        if self.cfg.training.lr_schedule == "constant":
            return lambda step: 1.0
        if self.cfg.training.lr_schedule != "cosine":
            raise ConfigError(f"training.lr_schedule={self.cfg.training.lr_schedule!r} is not valid: use cosine or constant")
        warmup = min(500, max(1, total_steps // 20))
        return lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, total_steps))))

    def _autocast(self) -> torch.autocast:
        """The BC loss under bf16 autocast with ``training.precision=bf16`` (weights, gradients, AdamW and
        EMA stay fp32): matmuls and convs run in bf16, norms and losses in fp32. On a CPU with AMX /
        AVX512-BF16 (this one) a step costs ~0.7x the CPU time of fp32 (docs/BENCHMARKS.md)."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.training.precision == "bf16")

    @torch.no_grad()
    def _val_loss(self, val_loader: DataLoader) -> float:
        with self._autocast():
            losses = [self.ema_model.compute_loss(to_device(b, self.device), self.ema_model)[0].item() for b in val_loader]
        return float(sum(losses) / max(1, len(losses)))

    # ------------------------------------------------------------------ loop
    def run(self) -> Dict[str, Any]:
        cfg = self.cfg
        loader, val_loader = self.build_data()
        resumed = self.resume()
        if resumed:
            print(f"resumed from {resumed} at epoch {self.epoch}")
        self.model.to(self.device)
        self.ema_model.to(self.device)
        total_steps = cfg.training.max_train_steps or cfg.training.num_epochs * len(loader)
        scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_lambda(total_steps),
                                                      last_epoch=self.global_step - 1 if self.global_step else -1)
        logger = RunLogger(self.output_dir, cfg.logging, cfg)
        runner = PointCloudEnvRunner(cfg.task, self.output_dir, n_episodes=cfg.eval.n_episodes, n_envs=cfg.eval.n_envs,
                                     n_videos=cfg.eval.n_videos, render_size=cfg.eval.render_size,
                                     max_episode_steps=cfg.eval.max_episode_steps, n_obs_steps=cfg.n_obs_steps,
                                     seed=cfg.eval.seed, vec_mode=cfg.eval.vec_mode)
        metrics: Dict[str, Any] = {}
        start = time.time()
        # stop_at_epoch: end early but keep num_epochs' LR schedule, to reproduce a checkpoint from the middle of a run.
        end_epoch = min(cfg.training.num_epochs, cfg.training.stop_at_epoch or cfg.training.num_epochs)
        with InterruptGuard():
            try:
                while self.epoch < end_epoch and self.global_step < total_steps:
                    raise_if_interrupted()
                    metrics = {"train/epoch": self.epoch, **self._train_epoch(loader, scheduler, total_steps)}
                    last = self.epoch + 1 == end_epoch or self.global_step >= total_steps
                    if cfg.training.val_every and (self.epoch % cfg.training.val_every == 0 or last) and len(val_loader):
                        metrics["train/val_loss"] = self._val_loss(val_loader)
                    improved = False
                    if cfg.training.rollout_every and ((self.epoch + 1) % cfg.training.rollout_every == 0 or last):
                        metrics.update(runner.run(self.ema_model, tag=f"epoch{self.epoch:04d}"))
                        improved = metrics["eval/success_rate"] >= self.best_success_rate
                        self.best_success_rate = max(self.best_success_rate, metrics["eval/success_rate"])
                        metrics["eval/best_success_rate"] = self.best_success_rate
                    metrics["perf/train_minutes"] = (time.time() - start) / 60
                    self.epoch += 1
                    logger.log(metrics, step=self.global_step)
                    if cfg.training.checkpoint_every and (self.epoch % cfg.training.checkpoint_every == 0 or last):
                        self.save_checkpoint()
                        self.save_checkpoint(f"epoch_{self.epoch:04d}")
                    if improved:
                        self.save_checkpoint("best")
            except KeyboardInterrupt:
                print(f"\ninterrupted: saving {self.save_checkpoint()} (resume with the same command and hydra.run.dir)")
                raise
            finally:
                runner.close()
                logger.finish()
        return metrics

    def _train_epoch(self, loader: DataLoader, scheduler, total_steps: int) -> Dict[str, float]:
        self.model.train()
        losses = []
        with tqdm(loader, desc=f"epoch {self.epoch}", leave=False) as bar:
            for batch in bar:
                raise_if_interrupted()
                losses.append(self.train_step(batch, scheduler))
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
                if self.global_step >= total_steps:
                    break
        return {"train/loss": float(sum(losses) / max(1, len(losses))), "train/lr": scheduler.get_last_lr()[0]}

    def train_step(self, batch: Dict[str, Any], scheduler) -> float:
        """One optimizer step on a collated ``batch`` (see PointCloudDataset): loss under ``_autocast``,
        backward, AdamW, LR schedule, EMA. Returns the loss (also what ``scripts/bench_bc_step.py`` times)."""
        with self._autocast():
            loss, _info = self.model.compute_loss(to_device(batch, self.device), self.ema_model)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite BC loss at epoch {self.epoch}, step {self.global_step}; "
                                     f"the last good checkpoint is {self.latest_checkpoint()}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        scheduler.step()
        self.ema.step(self.model)
        self.global_step += 1
        return loss.item()
