"""Scores candidate action chunks of a frozen BC flow: the learnable part of the chunk-selection policy.

Why: the BC flow's behaviour rides on its noise draw (``scripts/eval_policy.py noise_scale=0`` drops a 0.60
policy to 0.07), and a weak BC policy succeeds in the episodes where its draws happened to be good. The
latent policy steers that draw with a Gaussian prior, but its evaluation still samples ``x0`` at std ~1,
so what PPO learned is averaged over the same noise (after 300k env steps its std had not moved from 1).
Choosing among ``N`` i.i.d. BC proposals keeps every executed chunk one the flow can produce (a typical
draw, not the atypical ``x0 = mean``) and lets evaluation take the best-scored one:

    x0_i ~ N(0, I), c_i = flow(x0_i)  (i = 1..N),   P(i | s) = softmax_i f(s, c_i),

with ``f`` an MLP on the observation features and the candidate's executed slice (normalized, clamped to
[-1, 1] as it will be executed). Its last layer starts at zero, so every candidate is equally likely: the
policy starts as exactly the BC policy. Value-guided re-ranking of a generalist's samples (V-GPS, Nakamoto
et al. 2024) and best-of-N steering work the same way; here the scorer is the policy and PPO trains it.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class ChunkSelector(nn.Module):
    """``forward(cond, candidates)`` -> logits ``(B, N)``: one score per candidate chunk."""

    def __init__(self, cond_dim: int, action_dim: int, n_action_steps: int, exec_start: int,
                 n_candidates: int = 16, hidden: int = 256):
        super().__init__()
        if n_candidates < 2:
            raise ValueError(f"chunk selection needs at least 2 candidates, got n_candidates={n_candidates}")
        self.n_candidates = int(n_candidates)
        self.exec_slice = slice(int(exec_start), int(exec_start) + int(n_action_steps))
        out = nn.Linear(hidden, 1)
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        self.score_net = nn.Sequential(nn.Linear(cond_dim + n_action_steps * action_dim, hidden), nn.Mish(),
                                       nn.Linear(hidden, hidden), nn.Mish(), out)

    def forward(self, cond: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """cond ``(B, cond_dim)``, candidates ``(B, N, horizon, Da)`` normalized, unclamped final chunks
        (only their executed slice is read) -> logits ``(B, N)``."""
        return self.score_executed(cond, self.executed_slices(candidates))

    def executed_slices(self, candidates: torch.Tensor) -> torch.Tensor:
        """``(B, N, horizon, Da)`` candidates -> what the scorer reads of them ``(B, N, Ta * Da)``: the executed
        steps, clamped to [-1, 1] as they will be executed (an off-policy replay stores only these)."""
        return candidates[:, :, self.exec_slice].clamp(-1.0, 1.0).flatten(2)

    def score_executed(self, cond: torch.Tensor, executed: torch.Tensor) -> torch.Tensor:
        """cond ``(B, cond_dim)``, executed slices ``(B, N, Ta * Da)`` -> scores ``(B, N)``."""
        B, N = executed.shape[:2]
        features = torch.cat([cond.unsqueeze(1).expand(B, N, cond.shape[-1]), executed], dim=-1)
        return self.score_net(features).squeeze(-1)
