"""The RL config composes only what RL reads, and every override users paste from the seed README composes."""
from __future__ import annotations

import inspect

import hydra
import pytest

from conftest import compose_cfg
from equi_diffpo.common.hydra_cli import route_task_name

# The seed README's example command (README "Commonly used overrides") plus the other documented keys.
SEED_README_OVERRIDES = [
    "task_name=stack_d0", "pretrained_policy_path=data/checkpoints/stack_d0_default.ckpt",
    "rl_training.num_epochs=50", "rl_training.rollout_collector.n_envs=8",
    "rl_training.rollout_collector.n_episodes_per_batch=32", "rl_training.rollout_collector.max_episode_steps=400",
    "rl_training.rollout_collector.render_episodes=2", "rl_training.checkpoint_every=5", "rl_training.val_every=5",
    "rl_training.ppo_trainer.clip_ratio=0.2", "rl_training.ppo_trainer.ppo_epochs=10",
    "rl_training.ppo_trainer.mini_batch_size=128", "rl_training.ppo_trainer.gamma=0.99",
    "rl_training.ppo_trainer.gae_lambda=0.95", "rl_training.ppo_trainer.entropy_coef=0.0",
    "rl_training.ppo_trainer.policy_lr=1e-5", "rl_training.ppo_trainer.critic_lr=1e-4",
    "rl_training.ppo_trainer.value_coef=0.5", "rl_training.ppo_trainer.max_grad_norm=1.0",
    "rl_training.ppo_trainer.target_kl=0.05", "rl_training.ppo_trainer.critic_warmup_epochs=1",
    "training.device=cuda:1", "training.seed=3", "logging.mode=disabled",
]
BC_ONLY_KEYS = ("dataset", "dataloader", "optimizer", "ema", "eval", "horizon", "n_obs_steps", "n_action_steps",
                "policy")
BC_ONLY_TRAINING_KEYS = ("num_epochs", "max_train_steps", "lr_schedule", "val_every", "rollout_every",
                         "checkpoint_every", "torch_threads")


def test_rl_config_holds_no_bc_keys():
    cfg = compose_cfg("train_maniflow_pointcloud_rl", [])
    assert not [k for k in BC_ONLY_KEYS if k in cfg]
    assert sorted(cfg.training) == ["device", "resume", "seed"]
    assert not [k for k in BC_ONLY_TRAINING_KEYS if k in cfg.training]
    assert cfg.rl_policy["_target_"].endswith("Policy")
    assert not {"demo_path", "dataset_path", "env_runner"} & set(cfg.task)   # data paths: BC/demo/convert configs only


@pytest.mark.parametrize("kind", ["privileged", "policy", "own"])
def test_each_critic_is_a_group_choice_with_only_the_keys_it_reads(kind):
    from equi_diffpo.rl_training.critic import CRITIC_KEYS
    cfg = compose_cfg("train_maniflow_pointcloud_rl", [f"critic={kind}"])
    assert cfg.critic.encoder == kind and set(cfg.critic) - {"encoder"} == CRITIC_KEYS[kind]


def routed(overrides: list) -> list:
    """The overrides as the entry points pass them on (``task_name=X`` also selects ``task=X``)."""
    argv = ["train_rl.py", *overrides]
    route_task_name(argv)
    return argv[1:]


def test_seed_readme_overrides_compose():
    cfg = compose_cfg("train_maniflow_pointcloud_rl", routed(SEED_README_OVERRIDES))
    assert cfg.task.name == "stack_d0" and cfg.task_name == "stack_d0"
    assert cfg.rl_training.rollout_collector.n_envs == 8 and cfg.rl_training.ppo_trainer.ppo_epochs == 10
    assert cfg.training.device == "cuda:1" and cfg.training.seed == 3 and cfg.logging.mode == "disabled"


@pytest.mark.parametrize("method", ["latent", "chain", "residual", "fpo", "select", "qselect"])
def test_each_rl_method_is_a_group_choice_with_only_its_keys(method):
    cfg = compose_cfg("train_maniflow_pointcloud_rl", [f"rl_policy={method}"])
    keys = {k: v for k, v in cfg.rl_policy.items() if k != "_target_"}
    params = inspect.signature(hydra.utils.get_class(cfg.rl_policy["_target_"]).__init__).parameters
    assert set(keys) == set(params) - {"self", "base_policy"}   # every key is read, every argument is set


def test_bc_config_keeps_its_keys_and_the_shared_ones():
    cfg = compose_cfg("train_maniflow_pointcloud", routed(["task_name=stack_d0", "training.device=cuda",
                                                           "logging.mode=disabled"]))
    assert cfg.task_name == "stack_d0" and cfg.training.num_epochs > 0 and cfg.training.device == "cuda"
    assert {"dataset", "optimizer", "ema", "policy"} <= set(cfg)
