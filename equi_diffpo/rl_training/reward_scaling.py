"""Running reward scaling (DPPO / ReinFlow style).

Sparse success rewards summed over long horizons give value targets whose scale drifts as the
policy improves; dividing rewards by the running std of the discounted return keeps the critic's
regression targets O(1) without shifting them (no mean subtraction, so the sign of a reward and
the meaning of "terminal = 0 future reward" are kept).
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np


class RunningMeanStd:
    """Mean and variance of a stream of arrays, merged batch by batch (Chan et al.'s parallel
    algorithm), so the statistics equal those of all samples seen so far."""

    def __init__(self, shape: tuple = (), epsilon: float = 1e-4):
        self.mean = np.zeros(shape, dtype=np.float64)
        self.var = np.ones(shape, dtype=np.float64)
        # A tiny prior count keeps the first merge well defined.
        self.count = float(epsilon)

    def update(self, x: np.ndarray) -> None:
        """x: (n, *shape) samples."""
        x = np.asarray(x, dtype=np.float64).reshape((-1,) + self.mean.shape)
        if x.shape[0] == 0:
            return
        batch_mean, batch_var, batch_count = x.mean(axis=0), x.var(axis=0), x.shape[0]
        delta = batch_mean - self.mean
        total = self.count + batch_count
        m2 = self.var * self.count + batch_var * batch_count + delta ** 2 * self.count * batch_count / total
        self.mean = self.mean + delta * batch_count / total
        self.var = m2 / total
        self.count = total

    def state_dict(self) -> Dict[str, Any]:
        return {"mean": self.mean.copy(), "var": self.var.copy(), "count": self.count}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.mean = np.asarray(state["mean"], dtype=np.float64).copy()
        self.var = np.asarray(state["var"], dtype=np.float64).copy()
        self.count = float(state["count"])


class RunningRewardScaler:
    """Divides rewards by the running std of the discounted return G_t = gamma * G_{t-1} + r_t.

    Call once per collected batch with time-ordered rewards: shape (T,) for episodes concatenated
    in time (the layout `compute_gae` takes) or (T, n_envs) for envs stepped in lock-step.
    The return accumulator is reset after each episode end and carried over to the next call for
    envs whose episode is still running.
    """

    def __init__(self, gamma: float, epsilon: float = 1e-8):
        self.gamma = float(gamma)
        self.epsilon = float(epsilon)
        self.return_rms = RunningMeanStd(shape=())
        self.ret: Optional[np.ndarray] = None  # running discounted return per env, shape rewards.shape[1:]

    def __call__(self, rewards: np.ndarray, episode_end: np.ndarray) -> np.ndarray:
        """rewards, episode_end: (T,) or (T, n_envs); returns scaled rewards, same shape, float32.

        Unlike step-wise scalers, the statistics are updated with the whole batch first and then
        applied to all of it, so every reward of a batch gets the same divisor.
        """
        rewards = np.asarray(rewards, dtype=np.float64)
        episode_end = np.asarray(episode_end, dtype=bool)
        if rewards.shape != episode_end.shape or rewards.ndim not in (1, 2):
            raise ValueError(f"rewards {rewards.shape} and episode_end {episode_end.shape} must match, (T,) or (T, n_envs)")
        if self.ret is None or self.ret.shape != rewards.shape[1:]:
            # New env layout: only valid when the previous call ended on episode boundaries.
            self.ret = np.zeros(rewards.shape[1:], dtype=np.float64)
        returns = np.empty_like(rewards)
        for t in range(rewards.shape[0]):
            self.ret = self.gamma * self.ret + rewards[t]
            returns[t] = self.ret
            self.ret = np.where(episode_end[t], 0.0, self.ret)
        self.return_rms.update(returns.reshape(-1))
        return (rewards / np.sqrt(self.return_rms.var + self.epsilon)).astype(np.float32)

    def state_dict(self) -> Dict[str, Any]:
        return {"gamma": self.gamma, "return_rms": self.return_rms.state_dict(),
                "ret": None if self.ret is None else self.ret.copy()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.gamma = float(state["gamma"])
        self.return_rms.load_state_dict(state["return_rms"])
        self.ret = None if state["ret"] is None else np.asarray(state["ret"], dtype=np.float64).copy()
