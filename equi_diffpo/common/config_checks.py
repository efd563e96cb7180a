"""Up-front checks of the numeric keys users override, so a bad value fails in a second, by name.

Why: without them ``rl_training.rollout_collector.n_envs=0`` ended in an IndexError deep in the
episode loop after the checkpoint was loaded, and a too-large ``mini_batch_size`` was silently one
full-batch step. Each entry point checks its rules before it builds an env or a model; a violation
is a :class:`ConfigError` naming the key, the value and what would work (reported on one line, exit
2, by :func:`equi_diffpo.common.errors.report_user_errors`). A rule whose key is absent from the
config is skipped, so a config that drops a key does not need this module changed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from omegaconf import DictConfig, OmegaConf

from equi_diffpo.common.errors import ConfigError
from equi_diffpo.common.run_logger import VALID_MODES

_ABSENT = object()


@dataclass(frozen=True)
class Rule:
    key: str                      # dotted config path
    accepts: Callable[[Any], bool]
    expected: str                 # what ``accepts`` wants, for the message


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def integer_at_least(key: str, low: int, nullable: bool = False) -> Rule:
    """An integer >= ``low`` (or null when ``nullable``: null means "off" / "the default")."""
    return Rule(key, lambda v: (nullable and v is None) or (isinstance(v, int) and not isinstance(v, bool) and v >= low),
                f"an integer >= {low}" + (" or null" if nullable else ""))


def positive(key: str, nullable: bool = False) -> Rule:
    return Rule(key, lambda v: (nullable and v is None) or (_is_number(v) and v > 0),
                "a number > 0" + (" or null" if nullable else ""))


def non_negative(key: str, nullable: bool = False) -> Rule:
    return Rule(key, lambda v: (nullable and v is None) or (_is_number(v) and v >= 0),
                "a number >= 0" + (" or null" if nullable else ""))


def fraction(key: str) -> Rule:
    return Rule(key, lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]")


def one_of(key: str, choices: Sequence[str]) -> Rule:
    return Rule(key, lambda v: v in choices, "one of " + ", ".join(choices))


def check_config(cfg: DictConfig, rules: Iterable[Rule]) -> None:
    """Raise :class:`ConfigError` for the first rule ``cfg`` breaks."""
    for rule in rules:
        value = OmegaConf.select(cfg, rule.key, default=_ABSENT)
        if value is not _ABSENT and not rule.accepts(value):
            raise ConfigError(f"{rule.key}={value!r} is not valid: use {rule.expected}")


_RC, _PPO = "rl_training.rollout_collector", "rl_training.ppo_trainer"
COMMON_RULES = (one_of("logging.mode", VALID_MODES),)
RL_RULES = COMMON_RULES + (
    integer_at_least(f"{_RC}.n_envs", 1), integer_at_least(f"{_RC}.n_episodes_per_batch", 1),
    integer_at_least(f"{_RC}.max_episode_steps", 1, nullable=True), integer_at_least(f"{_RC}.render_episodes", 0),
    integer_at_least(f"{_RC}.render_size", 1),
    integer_at_least("rl_training.num_epochs", 0), integer_at_least("rl_training.checkpoint_every", 0),
    integer_at_least("rl_training.val_every", 0), integer_at_least("rl_training.n_val_episodes", 1),
    integer_at_least("rl_training.update_threads", 1, nullable=True), integer_at_least(f"{_PPO}.ppo_epochs", 1), integer_at_least(f"{_PPO}.mini_batch_size", 1),
    integer_at_least(f"{_PPO}.critic_warmup_epochs", 0), positive(f"{_PPO}.clip_ratio"),
    fraction(f"{_PPO}.gamma"), fraction(f"{_PPO}.gae_lambda"),
    non_negative(f"{_PPO}.policy_lr"), non_negative(f"{_PPO}.head_lr", nullable=True), non_negative(f"{_PPO}.critic_lr"),
    non_negative(f"{_PPO}.entropy_coef"), non_negative(f"{_PPO}.value_coef"),
    positive(f"{_PPO}.max_grad_norm", nullable=True), positive(f"{_PPO}.target_kl", nullable=True),
)
BC_RULES = COMMON_RULES + (
    integer_at_least("dataloader.batch_size", 1), integer_at_least("training.num_epochs", 1),
    integer_at_least("training.max_train_steps", 1, nullable=True), integer_at_least("training.stop_at_epoch", 1, nullable=True),
    integer_at_least("training.checkpoint_every", 0),
    integer_at_least("training.val_every", 0), integer_at_least("training.rollout_every", 0),
    integer_at_least("eval.n_envs", 1), integer_at_least("eval.n_episodes", 1), positive("optimizer.lr"),
)
EVAL_RULES = COMMON_RULES + (
    integer_at_least("n_episodes", 1), integer_at_least("n_envs", 1), integer_at_least("n_videos", 0),
    integer_at_least("max_episode_steps", 1, nullable=True), integer_at_least("num_inference_steps", 1, nullable=True),
)
DEMO_RULES = COMMON_RULES + (integer_at_least("n_demos", 1), integer_at_least("max_attempts", 1, nullable=True))
CONVERT_RULES = COMMON_RULES + (integer_at_least("max_demos", 1, nullable=True),)


def check_minibatch_fits(cfg: DictConfig, n_action_steps: int) -> None:
    """``mini_batch_size`` must fit in the largest batch the collector can return (every episode
    run to ``max_episode_steps``, one chunk step per ``n_action_steps`` env steps). A larger value
    only ever gives one full-batch step per PPO epoch, which is not what the key asks for. A batch
    that comes out smaller (episodes ended early by success) is known only after a rollout and is
    legitimate: the trainer then takes the whole batch as one minibatch."""
    rc, mini_batch_size = cfg.rl_training.rollout_collector, cfg.rl_training.ppo_trainer.mini_batch_size
    if rc.max_episode_steps is None:
        return
    largest = rc.n_episodes_per_batch * math.ceil(rc.max_episode_steps / n_action_steps)
    if mini_batch_size > largest:
        raise ConfigError(
            f"{_PPO}.mini_batch_size={mini_batch_size} is larger than any batch this run collects ({largest} chunk steps "
            f"at most: {rc.n_episodes_per_batch} episodes x {rc.max_episode_steps} env steps / {n_action_steps} per chunk): "
            f"use {_PPO}.mini_batch_size<={largest} or raise {_RC}.n_episodes_per_batch")
