"""DiT-X: the transformer velocity network of the original ManiFlow checkpoints (``model.*`` keys).

Action tokens ``(B, horizon, Da)`` are embedded, then each block applies, all modulated by one
time embedding through adaLN (9 chunks: shift/scale/gate for each sub-layer):
self-attention over the action tokens -> cross-attention to the visual tokens (per-head
LayerNorm on q and k, ``qk_norm``) -> MLP. The time embedding combines the flow time ``t`` and the
"target t" (the integration step the caller is about to take, 0 for the instantaneous velocity),
so one net gives both flow-matching and consistency-flow (average) velocities.

Module names and order follow the original (DiT / RDT lineage) because the checkpoints store the
weights under them; the language-conditioning and pre-norm branches of the original are left out
(no point-cloud MimicGen checkpoint uses them, and the constructor refuses them).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from equi_diffpo.model.velocity_net import SinusoidalEmbedding


def _gelu_tanh() -> nn.Module:
    return nn.GELU(approximate="tanh")


class Mlp(nn.Module):
    """``fc1 -> GELU(tanh) -> fc2`` (timm's ``Mlp`` without dropout; same parameter names)."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = _gelu_tanh()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class RmsNorm(nn.Module):
    """RMS normalization with a learned per-channel gain ``weight`` (timm's ``RmsNorm``)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: ``x (B, T, D) * (1 + scale (B, D)) + shift (B, D)``."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class CrossAttention(nn.Module):
    """Queries from the action tokens ``x (B, T, D)``, keys/values from the context ``c (B, L, D)``."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False, qk_norm: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"n_emb={dim} is not divisible by n_head={num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        batch, n_tokens, dim = x.shape
        q = self.q(x).reshape(batch, n_tokens, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(c).reshape(batch, c.shape[1], 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(self.q_norm(q), self.k_norm(k), v)
        return self.proj(out.transpose(1, 2).reshape(batch, n_tokens, dim))


class DiTXBlock(nn.Module):
    """adaLN-modulated self-attention -> cross-attention -> MLP, each with a gated residual."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, p_drop_attn: float = 0.0,
                 qkv_bias: bool = False, qk_norm: bool = False):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(hidden_size, num_heads, dropout=p_drop_attn, batch_first=True)
        self.cross_attn = CrossAttention(hidden_size, num_heads, qkv_bias, qk_norm)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
                                              for _ in range(3))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 9 * hidden_size))

    def forward(self, x: torch.Tensor, time_c: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """x ``(B, T, D)``, time_c ``(B, D)``, context ``(B, L, D)`` -> ``(B, T, D)``."""
        (shift_sa, scale_sa, gate_sa, shift_ca, scale_ca, gate_ca,
         shift_mlp, scale_mlp, gate_mlp) = self.adaLN_modulation(time_c).chunk(9, dim=-1)
        h = modulate(self.norm1(x), shift_sa, scale_sa)
        x = x + gate_sa.unsqueeze(1) * self.self_attn(h, h, h, need_weights=False)[0]
        h = modulate(self.norm2(x), shift_ca, scale_ca)
        x = x + gate_ca.unsqueeze(1) * self.cross_attn(h, context)
        h = modulate(self.norm3(x), shift_mlp, scale_mlp)
        return x + gate_mlp.unsqueeze(1) * self.mlp(h)


class FinalLayer(nn.Module):
    """RmsNorm -> MLP (hidden -> hidden -> out), as in RDT."""

    def __init__(self, hidden_size: int, out_channels: int):
        super().__init__()
        self.norm_final = RmsNorm(hidden_size)
        self.ffn_final = Mlp(hidden_size, hidden_size, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn_final(self.norm_final(x))


def _time_encoder(embed_dim: int, out_dim: int) -> nn.Sequential:
    """Sinusoidal features of a scalar in [0, 1] (unscaled, as the original) -> 2-layer Mish MLP."""
    return nn.Sequential(SinusoidalEmbedding(embed_dim, scale=1.0), nn.Linear(embed_dim, 4 * embed_dim), nn.Mish(),
                         nn.Linear(4 * embed_dim, out_dim))


class DiTX(nn.Module):
    """``forward(sample (B, T, Da), t (B,), target_t (B,), vis_cond (B, L, cond_dim))`` -> ``(B, T, Da)``.

    ``visual_cond_len * n_obs_steps`` is the number of learned visual position embeddings (the
    longest context); a shorter context uses the first ``L`` of them.
    """

    def __init__(self, input_dim: int, output_dim: int, horizon: int, n_obs_steps: int, cond_dim: int,
                 visual_cond_len: int = 1024, diffusion_timestep_embed_dim: int = 256,
                 diffusion_target_t_embed_dim: int = 256, n_layer: int = 12, n_head: int = 12, n_emb: int = 768,
                 mlp_ratio: float = 4.0, p_drop_attn: float = 0.1, qkv_bias: bool = False, qk_norm: bool = False):
        super().__init__()
        self.horizon = horizon
        self.input_emb = nn.Linear(input_dim, n_emb)
        self.pos_emb = nn.Parameter(torch.zeros(1, horizon, n_emb))
        self.vis_cond_obs_emb = nn.Linear(cond_dim, n_emb)
        self.vis_cond_pos_embed = nn.Parameter(torch.zeros(1, visual_cond_len * n_obs_steps, n_emb))
        self.flow_timestep_encoder = _time_encoder(diffusion_timestep_embed_dim, n_emb)
        self.flow_target_t_encoder = _time_encoder(diffusion_target_t_embed_dim, n_emb)
        self.timestep_target_t_adaptor = nn.Linear(2 * n_emb, n_emb)
        self.blocks = nn.ModuleList(DiTXBlock(n_emb, n_head, mlp_ratio, p_drop_attn, qkv_bias, qk_norm)
                                    for _ in range(n_layer))
        self.final_layer = FinalLayer(n_emb, output_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        """The original's init: xavier Linears, N(0, 0.02) embeddings and time MLPs, zero adaLN and
        zero last layer (so a fresh net predicts zero velocity and each block starts as identity)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for block in self.blocks:
            nn.init.xavier_uniform_(block.self_attn.in_proj_weight)
            nn.init.zeros_(block.self_attn.in_proj_bias)
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        small = [self.input_emb, self.vis_cond_obs_emb, self.timestep_target_t_adaptor,
                 *(m for enc in (self.flow_timestep_encoder, self.flow_target_t_encoder)
                   for m in enc if isinstance(m, nn.Linear))]
        for linear in small:
            nn.init.normal_(linear.weight, std=0.02)
            nn.init.zeros_(linear.bias)
        nn.init.normal_(self.pos_emb, std=0.02)
        nn.init.zeros_(self.final_layer.ffn_final.fc2.weight)
        nn.init.zeros_(self.final_layer.ffn_final.fc2.bias)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, target_t: torch.Tensor,
                vis_cond: torch.Tensor) -> torch.Tensor:
        batch = sample.shape[0]
        x = self.input_emb(sample) + self.pos_emb
        t_emb = self.flow_timestep_encoder(timestep.reshape(-1).expand(batch))
        target_emb = self.flow_target_t_encoder(target_t.reshape(-1).expand(batch))
        time_c = self.timestep_target_t_adaptor(torch.cat([t_emb, target_emb], dim=-1))
        context = self.vis_cond_obs_emb(vis_cond) + self.vis_cond_pos_embed[:, :vis_cond.shape[1]]
        for block in self.blocks:
            x = block(x, time_c, context)
        return self.final_layer(x)
