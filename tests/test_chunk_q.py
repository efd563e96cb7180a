"""Off-policy chunk critic for best-of-N selection (``rl_policy=qselect``): the replay pairs each chunk step with
its successor only within an episode (also across the ring's wrap), TD learning backs a success up through the
steps and makes the greedy choice pick the candidates that succeed, and an RL epoch trains only the selector
and resumes with the critic's twin, targets and optimizer."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from conftest import TINY_RL, compose_cfg, tiny_base_policy
from equi_diffpo.policy.chunk_q_policy import ChunkQSelectionPolicy
from equi_diffpo.rl_training.chunk_q_trainer import ChunkQConfig, ChunkQTrainer, ChunkReplay
from equi_diffpo.rl_training.rl_rollout_collector import RolloutBatch

torch.set_num_threads(1)
N = 4


def test_replay_successor_stays_within_the_episode_across_the_wrap():
    replay = ChunkReplay(capacity=5)
    for first in (0, 3):   # two episodes of 3 steps: the second wraps around the ring's end
        cond = np.arange(first, first + 3, dtype=np.float32)[:, None]
        replay.add(cond, np.zeros((3, N, 2), np.float32), np.array([0, 0, 1.0]), np.array([0, 0, 1.0]))
    assert len(replay) == 5 and replay.ptr == 1
    np.random.seed(0)
    for n in (1, 2):
        batch = replay.sample(200, n)
        inner = batch["steps_to_end"] >= n
        torch.testing.assert_close(batch["next_cond"][inner], batch["cond"][inner] + n)   # step i -> i + n of its episode
        torch.testing.assert_close(batch["steps_to_end"], 2 - batch["cond"][:, 0].long() % 3)
    torch.testing.assert_close(batch["end_success"], torch.ones(200))
    with pytest.raises(ValueError, match="whole episodes"):
        replay.add(cond, np.zeros((3, N, 2), np.float32), np.zeros(3), np.zeros(3))


def fake_rollout(policy: ChunkQSelectionPolicy, n_episodes: int, rng: np.random.Generator) -> RolloutBatch:
    """Two-step episodes on random features: the second step succeeds iff the chunk chosen there has a negative
    first executed entry; the choice is uniform (what a zero-initialised critic explores with)."""
    head = policy.head
    steps = 2 * n_episodes
    cond = rng.normal(size=(steps, policy.base.obs_encoder.output_dim)).astype(np.float32)
    chains = rng.uniform(-1, 1, size=(steps, N, policy.base.horizon, policy.base.action_dim)).astype(np.float32)
    success = np.zeros(steps, np.float32)
    success[1::2] = chains[1::2, 0, head.exec_slice.start, 0] < 0
    episode_end = np.tile(np.array([0, 1], np.float32), n_episodes)
    zeros = np.zeros(steps, np.float32)
    return RolloutBatch(obs={}, chains=chains, cond=cond, log_probs=zeros, values=zeros, rewards=success,
                        next_values=zeros, terminated=success, episode_end=episode_end, episodes=[], env_steps=steps,
                        seconds=1.0, video_paths=[])


@pytest.mark.parametrize("n_step, first_value", [(1, 0.9 * (1 - 0.5 ** N)), (2, 0.9 * 0.5)])
def test_td_learning_backs_success_up_and_the_argmax_picks_it(n_step, first_value):
    """1-step targets back up the best candidate's value (0.9 * P(some candidate wins)); 2-step targets in 2-step
    episodes are the Monte-Carlo return of the uniform choice that made the data (0.9 * 0.5)."""
    torch.manual_seed(0)
    np.random.seed(0)
    policy = ChunkQSelectionPolicy(tiny_base_policy().eval(), n_candidates=N, selector_hidden=64)
    trainer = ChunkQTrainer(policy, ChunkQConfig(gamma=0.9, n_step=n_step, lr=1e-3, batch_size=128,
                                                 updates_per_epoch=100, polyak=0.05))
    rng = np.random.default_rng(0)
    for _ in range(10):
        stats = trainer.update(fake_rollout(policy, 200, rng))
    assert stats["chunk_q/replay_size"] == 4000
    test = fake_rollout(policy, 200, rng)
    cond, chains = torch.from_numpy(test.cond), torch.from_numpy(test.chains)
    with torch.no_grad():
        q = policy.head(cond, chains)
    last, first = slice(1, None, 2), slice(0, None, 2)
    picked = q[last].argmax(dim=1)
    wins = chains[last][torch.arange(len(picked)), picked, policy.head.exec_slice.start, 0] < 0
    assert wins.float().mean() > 0.85   # best possible: the 1 - 0.5**4 = 0.94 of states with a winner; uniform: 0.5
    # The first step never succeeds itself: its value is the backup (the twin minimum and the fit to random
    # features keep the 1-step one below its ideal).
    assert first_value - 0.25 < q[first].mean().item() < first_value + 0.05, q[first].mean().item()


def test_qselect_rl_epoch_trains_only_the_selector_and_resumes(tiny_checkpoint, tmp_path):
    from equi_diffpo.rl_training.rl_workspace import RLWorkspace

    overrides = TINY_RL + [f"pretrained_policy_path={tiny_checkpoint}", "rl_policy=qselect", f"rl_policy.n_candidates={N}",
                           "rl_policy.selector_hidden=16", "rl_training.chunk_q.batch_size=8",
                           "rl_training.chunk_q.updates_per_epoch=5"]
    workspace = RLWorkspace(compose_cfg("train_maniflow_pointcloud_rl", overrides), output_dir=str(tmp_path))
    assert isinstance(workspace.trainer, ChunkQTrainer) and workspace.reward_scaler is None
    with torch.no_grad():   # the tiny env's episodes do not succeed: a nonzero Q gives the TD steps something to fit
        workspace.rl_policy.head.score_net[-1].bias.fill_(0.5)
    bc_weights = {k: v.clone() for k, v in workspace.model.state_dict().items()}
    metrics = workspace.run()
    assert metrics["chunk_q/replay_size"] > 0 and np.isfinite(metrics["chunk_q/q_loss"])
    changed = {k.split(".")[0] for k, v in workspace.model.state_dict().items()
               if k not in bc_weights or not torch.equal(v, bc_weights[k])}
    assert changed == {"chunk_selector"}

    resumed = RLWorkspace(compose_cfg("train_maniflow_pointcloud_rl", overrides + ["rl_training.num_epochs=2"]),
                          output_dir=str(tmp_path))
    assert resumed.resume() and resumed.epoch == 1
    for mine, theirs in zip(resumed.trainer.targets.parameters(), workspace.trainer.targets.parameters()):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0)
    assert os.path.exists(os.path.join(workspace.checkpoint_dir, "latest.ckpt"))
