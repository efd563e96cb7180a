"""Self-imitation (rl_training.self_imitation): which chunk steps it keeps, its FIFO replay, that its BC steps
move the velocity net towards the replayed chunks (and only then), and its wiring into the RL workspace."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import TINY_POLICY_KWARGS, TINY_RL, compose_cfg, tiny_base_policy, tiny_obs
from equi_diffpo.rl_training.rl_workspace import RLWorkspace
from equi_diffpo.rl_training.self_imitation import SelfImitation, SelfImitationConfig, SuccessReplay, successful_steps

torch.set_num_threads(1)


def test_successful_steps_keeps_whole_successful_episodes_only():
    # Three episodes of 3, 2 and 3 steps: the first and last end in success, the middle one is truncated.
    episode_end = np.array([0, 0, 1, 0, 1, 0, 0, 1], dtype=np.float32)
    terminated = np.array([0, 0, 1, 0, 0, 0, 0, 1], dtype=np.float32)
    assert successful_steps(terminated, episode_end).tolist() == [True] * 3 + [False] * 2 + [True] * 3


def test_replay_is_fifo_and_samples_bc_batches():
    replay = SuccessReplay(capacity=5)
    for start in (0, 3, 6):
        ids = np.arange(start, start + 3, dtype=np.float32)
        replay.add({"agent_pos": ids[:, None, None] * np.ones((3, 2, 9))}, ids[:, None, None] * np.ones((3, 8, 7)))
    assert len(replay) == 5
    assert replay.action[:, 0, 0].tolist() == [4, 5, 6, 7, 8]          # the oldest four were dropped
    batch = replay.sample(16, np.random.default_rng(0))
    assert batch["obs"]["agent_pos"].shape == (16, 2, 9) and batch["action"].shape == (16, 8, 7)
    # obs and action rows stay paired
    torch.testing.assert_close(batch["obs"]["agent_pos"][:, 0, 0], batch["action"][:, 0, 0].double())


def _replay_of_one_chunk(sil: SelfImitation, n: int) -> tuple[dict, torch.Tensor]:
    """Fill the replay with ``n`` copies of one (obs, chunk) pair via ``add_rollout`` (one successful episode)."""
    obs = {k: v.repeat(n, *[1] * (v.dim() - 1)) for k, v in tiny_obs(1).items()}
    h, da = TINY_POLICY_KWARGS["horizon"], TINY_POLICY_KWARGS["action_dim"]
    target = torch.linspace(-0.8, 0.8, h * da).view(1, h, da)
    chains = target.expand(n, 3, h, da).numpy()                     # (M, K+1, H, Da): only the last entry is read
    terminated = np.zeros(n, dtype=np.float32)
    terminated[-1] = 1
    kept = sil.add_rollout({k: v.numpy() for k, v in obs.items()}, chains, terminated, terminated.copy())
    assert kept == n
    return {k: v[:1] for k, v in obs.items()}, sil.base.decode_actions(target)["action_pred"]


def test_bc_steps_move_the_frozen_velocity_net_towards_successful_chunks():
    torch.manual_seed(0)
    base = tiny_base_policy()
    base.requires_grad_(False)               # as the latent-noise policy leaves it (encoder frozen too)
    sil = SelfImitation(base, {"steps_per_epoch": 300, "batch_size": 8, "lr": 3e-3, "min_chunks": 8})
    obs, target = _replay_of_one_chunk(sil, 8)
    noise = torch.randn(1, base.horizon, base.action_dim, generator=torch.Generator().manual_seed(1))
    before = (base.predict_action(obs, noise)["action_pred"] - target).abs().mean()
    stats = sil.update()
    after = (base.predict_action(obs, noise)["action_pred"] - target).abs().mean()
    assert stats["self_imitation/steps"] == 300 and np.isfinite(stats["self_imitation/loss"])
    assert after < 0.8 * before, (before, after)   # measured: 0.62 -> 0.41
    assert not any(p.requires_grad for p in base.velocity_net.parameters())   # the acting net is the EMA


def test_a_method_that_trains_the_velocity_net_itself_is_refused():
    with pytest.raises(ValueError, match="rl_policy=latent or residual"):
        SelfImitation(tiny_base_policy(), {"steps_per_epoch": 1})


def test_no_step_before_the_replay_holds_min_chunks():
    base = tiny_base_policy()
    base.requires_grad_(False)
    sil = SelfImitation(base, {"steps_per_epoch": 5, "min_chunks": 9})
    _replay_of_one_chunk(sil, 8)
    weights = {k: v.clone() for k, v in base.state_dict().items()}
    assert sil.update()["self_imitation/steps"] == 0
    assert all(torch.equal(v, weights[k]) for k, v in base.state_dict().items())


def test_unknown_or_bad_keys_are_named():
    with pytest.raises(ValueError, match="steps_per_epch"):
        SelfImitationConfig.from_dict({"steps_per_epch": 3})
    with pytest.raises(ValueError, match="batch_size"):
        SelfImitationConfig(batch_size=0)


def test_workspace_runs_self_imitation_and_saves_its_optimizer(tiny_checkpoint, tmp_path):
    cfg = compose_cfg("train_maniflow_pointcloud_rl", TINY_RL + [
        f"pretrained_policy_path={tiny_checkpoint}", "rl_training.val_every=0",
        "rl_training.self_imitation.steps_per_epoch=2", "rl_training.self_imitation.min_chunks=1"])
    workspace = RLWorkspace(cfg, output_dir=str(tmp_path))
    metrics = workspace.run()
    assert "self_imitation/replay_chunks" in metrics and "self_imitation/steps" in metrics
    assert "self_imitation" in workspace.checkpoint_payload()["state_dicts"]
