"""scripts/diagnose_policy_gradient.py: its statistics find a planted advantage/x0 correlation and
its time baseline removes the per-chunk-index mean (the collection itself is the RL collector's)."""
from __future__ import annotations

import importlib.util

import numpy as np

from conftest import REPO_ROOT

spec = importlib.util.spec_from_file_location("diagnose", REPO_ROOT / "scripts" / "diagnose_policy_gradient.py")
diagnose = importlib.util.module_from_spec(spec)
spec.loader.exec_module(diagnose)


def synthetic_batches(n_batches: int = 5, n_chunks: int = 400, horizon: int = 16, action_dim: int = 10, seed: int = 0):
    rng = np.random.default_rng(seed)
    n = n_batches * n_chunks
    episode_end = np.zeros(n)
    episode_end[19::20] = 1.0
    return {"x0": rng.standard_normal((n, horizon, action_dim)), "rewards": rng.random(n),
            "success": np.zeros(n), "episode_end": episode_end, "batch": np.repeat(np.arange(n_batches), n_chunks),
            "chunk_index": np.tile(np.arange(20), n // 20)}


def test_planted_correlation_shows_in_its_action_dim_only():
    data = synthetic_batches()
    exec_slice = slice(1, 9)
    # Advantage rises when the executed z entries (dim 2) of x0 are low: a deficit PPO should cancel.
    advantages = -data["x0"][:, exec_slice, 2].mean(1) + 0.5 * np.random.default_rng(1).standard_normal(len(data["x0"]))
    shared, single = diagnose.gradient_t_stats(advantages, data, exec_slice)
    assert shared.shape == (10,)
    assert shared[2] < -10
    assert np.abs(np.delete(shared, 2)).max() < 6
    assert single > 1.0


def test_time_baseline_zeroes_the_mean_return_at_each_chunk_index():
    data = synthetic_batches()
    returns = diagnose.mc_returns(data["rewards"], data, 0.9)
    centred = diagnose.minus_time_baseline(returns, data)
    m = (data["batch"] == 2) & (data["chunk_index"] == 7)
    assert abs(centred[m].mean()) < 1e-5   # float32 returns
    assert np.allclose(centred[m] - returns[m], centred[m][0] - returns[m][0], atol=1e-6)
