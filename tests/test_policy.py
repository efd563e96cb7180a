"""ManiFlow point-cloud policy: training signal, inference shapes, checkpoint round trip, time convention."""
from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn as nn

from equi_diffpo.model.ema import EMAModel
from equi_diffpo.model.normalizer import LinearNormalizer
from equi_diffpo.policy import TIME_CONVENTION, ManiFlowPointcloudPolicy

torch.set_num_threads(1)

TINY = dict(point_dim=3, agent_pos_dim=9, action_dim=7, horizon=8, n_action_steps=4, n_obs_steps=2,
            num_inference_steps=2, encoder_output_dim=16, state_output_dim=8, pointnet_hidden=[16, 32],
            down_dims=[32, 64], kernel_size=3, time_embed_dim=32, n_groups=8)


def make_dataset(n: int = 32, n_points: int = 24, seed: int = 0) -> dict:
    """Raw batch whose action chunk is a smooth function of agent_pos (learnable from obs)."""
    g = torch.Generator().manual_seed(seed)
    agent_pos = torch.rand(n, TINY["horizon"], 9, generator=g)
    point_cloud = torch.rand(n, TINY["horizon"], n_points, 6, generator=g)   # 6 channels: RGB dropped
    steps = torch.arange(TINY["horizon"]).view(1, -1, 1) / TINY["horizon"]
    action = agent_pos[:, :1, :7] * 0.3 + 0.05 * steps + 0.2
    return {"obs": {"point_cloud": point_cloud, "agent_pos": agent_pos}, "action": action}


def make_policy(batch: dict, **overrides) -> ManiFlowPointcloudPolicy:
    policy = ManiFlowPointcloudPolicy(**{**TINY, **overrides})
    normalizer = LinearNormalizer.fit({"action": batch["action"], "agent_pos": batch["obs"]["agent_pos"],
                                       "point_cloud": batch["obs"]["point_cloud"]},
                                      modes={"point_cloud": "identity"})
    policy.set_normalizer(normalizer)
    return policy


def obs_frames(batch: dict, n: int = 2) -> dict:
    return {k: v[:, :n] for k, v in batch["obs"].items()}


def test_loss_decreases_with_ema_teacher():
    torch.manual_seed(0)
    batch = make_dataset()
    policy = make_policy(batch)
    ema_model = copy.deepcopy(policy)
    ema = EMAModel(ema_model)
    optimizer = torch.optim.Adam(policy.parameters(), lr=3e-3)
    losses = []
    for _ in range(100):
        loss, info = policy.compute_loss(batch, ema_model=ema_model)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ema.step(policy)
        losses.append(loss.item())
        assert set(info) == {"loss", "loss_flow", "loss_consistency"}
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.6 * first, (first, last)


def test_predict_action_shapes_and_executed_slice():
    batch = make_dataset(n=5)
    policy = make_policy(batch)
    out = policy.predict_action(obs_frames(batch, 3))   # extra frames are ignored
    assert out["action"].shape == (5, TINY["n_action_steps"], 7)
    assert out["action_pred"].shape == (5, TINY["horizon"], 7)
    start = TINY["n_obs_steps"] - 1
    assert torch.equal(out["action"], out["action_pred"][:, start:start + TINY["n_action_steps"]])
    with pytest.raises(ValueError):
        policy.predict_action(obs_frames(batch, 1))


def test_same_noise_identical_actions_after_save_load():
    torch.manual_seed(1)
    batch = make_dataset(n=4)
    policy = make_policy(batch)
    # Move the weights away from init so a load that silently skipped them would be caught.
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
    for _ in range(3):
        loss, _ = policy.compute_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    buffer = io.BytesIO()
    torch.save(policy.state_dict(), buffer)
    buffer.seek(0)
    fresh = ManiFlowPointcloudPolicy(**policy.get_policy_config())   # normalizer not set
    fresh.load_state_dict(torch.load(buffer))
    noise = torch.randn(4, TINY["horizon"], 7)
    obs = obs_frames(batch)
    a = policy.predict_action(obs, noise=noise)["action_pred"]
    b = fresh.predict_action(obs, noise=noise)["action_pred"]
    assert torch.equal(a, b)
    assert not torch.equal(a, policy.predict_action(obs, noise=noise + 1)["action_pred"])


class StraightLineField(nn.Module):
    """Exact velocity of the straight path noise -> ``x1`` under t0=noise, t1=data: (x1 - x) / (1 - t)."""

    def __init__(self, x1: torch.Tensor):
        super().__init__()
        self.x1 = x1

    def forward(self, x, t, dt, cond):
        t = torch.as_tensor(t, dtype=x.dtype).expand(x.shape[0]).view(-1, 1, 1)
        # At t = 1 the path has arrived (x = x1): velocity 0 rather than 0 / 0.
        return (self.x1 - x) / (1 - t).clamp_min(1e-6)


@pytest.mark.parametrize("steps", [1, 2])
def test_time_convention_euler_maps_noise_to_data(steps):
    batch = make_dataset(n=3)
    policy = make_policy(batch, num_inference_steps=steps)
    assert policy.time_convention == TIME_CONVENTION == "t0_noise_t1_data"
    target = batch["action"]
    policy.velocity_net = StraightLineField(policy.normalizer["action"].normalize(target))
    out = policy.predict_action(obs_frames(batch), noise=torch.randn(3, TINY["horizon"], 7) * 3)
    torch.testing.assert_close(out["action_pred"], target, atol=1e-5, rtol=1e-5)


def test_training_targets_follow_time_convention():
    """With one data chunk repeated, the exact straight-line field has zero flow AND consistency
    loss only if x_t = (1 - t) x0 + t x1 and v = x1 - x0 (any other convention gives loss > 0)."""
    batch = make_dataset(n=8)
    batch["action"] = batch["action"][:1].expand(8, -1, -1).clone()
    policy = make_policy(batch, flow_batch_ratio=0.5)
    policy.velocity_net = StraightLineField(policy.normalizer["action"].normalize(batch["action"][:1]))
    _, info = policy.compute_loss(batch)
    assert info["loss_flow"] < 1e-8 and info["loss_consistency"] < 1e-8, info


def test_policy_config_roundtrip_and_time_convention_guard():
    config = ManiFlowPointcloudPolicy(**TINY).get_policy_config()
    assert config["time_convention"] == TIME_CONVENTION
    assert ManiFlowPointcloudPolicy(**config).get_policy_config() == config
    with pytest.raises(ValueError, match="time_convention"):
        ManiFlowPointcloudPolicy(**{**config, "time_convention": "t0_data_t1_noise"})


def test_ema_warmup_decay_and_buffer_copy():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = EMAModel(copy.deepcopy(model), power=0.75, max_value=0.9999)
    assert ema.get_decay(0) == 0.0 and ema.get_decay(1) == 0.0
    assert ema.get_decay(10) == pytest.approx(1 - 10 ** -0.75)   # step 9 -> 1 - (1 + 9) ** -0.75
    assert ema.get_decay(10 ** 9) == 0.9999
    for _ in range(3):
        ema.step(model)
    old = ema.averaged_model[0].weight.clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].running_mean.fill_(5.0)
    ema.step(model)   # optimization_step 3 -> decay 1 - 3 ** -0.75
    d = 1 - 3 ** -0.75
    torch.testing.assert_close(ema.averaged_model[0].weight, d * old + (1 - d) * model[0].weight)
    assert torch.equal(ema.averaged_model[1].running_mean, torch.full((2,), 5.0))


def test_sample_prediction_returns_the_velocity_to_its_predicted_chunk():
    """prediction='sample': the U-Net outputs the clean chunk; callers get the velocity reaching it,
    so one Euler step of dt = 1 - t lands on it (and the sampler, RL chains and FPO need no change)."""
    torch.manual_seed(0)
    net = ManiFlowPointcloudPolicy(**TINY, prediction="sample").velocity_net
    cond_dim = TINY["n_obs_steps"] * (TINY["encoder_output_dim"] + TINY["state_output_dim"])
    x, cond, t = torch.randn(5, TINY["horizon"], 7), torch.randn(5, cond_dim), torch.rand(5)
    v = net(x, t, 0.3, cond)
    net.prediction = "velocity"          # same weights: the raw output
    chunk = net(x, t, 0.3, cond)
    torch.testing.assert_close(x + v * (1 - t).view(-1, 1, 1), chunk, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"policy\.prediction='x0' is not valid"):
        ManiFlowPointcloudPolicy(**TINY, prediction="x0")


def spread_and_error(prediction: str, steps: int = 30) -> tuple[float, float]:
    """Train on the deterministic toy task; (variance of the action chunk over 16 noise draws per obs,
    MSE to the demo chunk), in normalized units."""
    torch.manual_seed(0)
    batch = make_dataset()
    policy = make_policy(batch, prediction=prediction)
    optimizer = torch.optim.Adam(policy.parameters(), lr=3e-3)
    for _ in range(steps):
        loss, _ = policy.compute_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    obs = {k: v[:8].repeat_interleave(16, 0) for k, v in obs_frames(batch).items()}
    noise = torch.randn(128, TINY["horizon"], 7, generator=torch.Generator().manual_seed(1))
    normalize = policy.normalizer["action"].normalize
    chunks = normalize(policy.predict_action(obs, noise=noise)["action_pred"]).view(8, 16, TINY["horizon"], 7)
    return chunks.var(dim=1).mean().item(), ((chunks - normalize(batch["action"][:8])[:, None]) ** 2).mean().item()


def test_sample_prediction_learns_to_ignore_the_noise():
    """The reason for prediction='sample' (model/velocity_net.py): a velocity net leaves its input noise in
    the actions until it has learnt to cancel it; a sample net's actions barely depend on the draw."""
    velocity, sample = spread_and_error("velocity"), spread_and_error("sample")
    assert sample[0] < 0.2 * velocity[0] and sample[1] < 0.6 * velocity[1], (velocity, sample)
