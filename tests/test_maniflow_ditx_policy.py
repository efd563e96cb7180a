"""ManiFlowTransformerPointcloudPolicy (the original ManiFlow DiT-X policy): layout, conventions, training.

Tiny configs of the same class (the MimicGen size, 181.8M parameters, is only built on the meta
device to check the checkpoint layout of the original MimicGen config).
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from equi_diffpo.model.equidiff_normalizer import EquidiffNormalizer
from equi_diffpo.model.vision_3d.pointnet_extractor import farthest_point_sample
from equi_diffpo.policy.maniflow.maniflow_pointcloud_policy import (ManiFlowTransformerPointcloudPolicy,
                                                                    agent_pos_to_robosuite_state)
from equi_diffpo.policy.maniflow.time_convention import CONVENTIONS

CONVENTION_NAMES = sorted(CONVENTIONS)


def shape_meta(n_points: int) -> dict:
    return {"obs": {"robot0_eye_in_hand_image": {"shape": [3, 84, 84], "type": "rgb"},
                    "point_cloud": {"shape": [n_points, 6], "type": "point_cloud"},
                    "robot0_eef_pos": {"shape": [3]}, "robot0_eef_quat": {"shape": [4]},
                    "robot0_gripper_qpos": {"shape": [2]}},
            "action": {"shape": [10]}}


def policy_cfg(n_points=32, n_layer=1, n_head=2, n_emb=16, embed=8, enc=16, **overrides) -> dict:
    """The original MimicGen ``cfg.policy`` keys (extras included), sized by the arguments."""
    cfg = dict(horizon=16, n_action_steps=8, n_obs_steps=2, num_inference_steps=4, obs_as_global_cond=True,
               n_layer=n_layer, n_head=n_head, n_emb=n_emb, visual_cond_len=n_points, max_lang_cond_len=1024,
               qkv_bias=True, qk_norm=True, block_type="DiTX", language_conditioned=False, flow_batch_ratio=0.75,
               consistency_batch_ratio=0.25, denoise_timesteps=10, sample_t_mode_flow="beta",
               sample_t_mode_consistency="discrete", sample_dt_mode_consistency="uniform",
               sample_target_t_mode="relative", diffusion_timestep_embed_dim=embed,
               diffusion_target_t_embed_dim=embed, encoder_type="DP3Encoder", crop_shape=None,
               encoder_output_dim=enc, pcd_input_channel=6, pcd_down_sample_num=n_points,
               shape_meta=shape_meta(n_points), use_pc_color=True, pointnet_type="pointnet", downsample_points=True,
               use_canonicalization=False, canonicalization_mode="translation_only",
               pointcloud_encoder_cfg=dict(in_channels=6, out_channels=enc, use_layernorm=True, final_norm="layernorm",
                                           normal_channel=False, num_points=n_points, pointwise=True),
               time_convention="t0_noise_t1_data")
    cfg.update(overrides)
    return cfg


def fitted_normalizer(n_points: int = 32) -> EquidiffNormalizer:
    gen = torch.Generator().manual_seed(0)
    data = {"action": torch.rand(200, 10, generator=gen) * 2 - 1,
            "robot0_eef_pos": torch.rand(200, 3, generator=gen), "robot0_eef_quat": torch.rand(200, 4, generator=gen),
            "robot0_gripper_qpos": torch.rand(200, 2, generator=gen) * 0.04,
            "point_cloud": torch.rand(200, 6, generator=gen)}
    return EquidiffNormalizer.fit(data)


def tiny_policy(**overrides) -> ManiFlowTransformerPointcloudPolicy:
    torch.manual_seed(0)
    policy = ManiFlowTransformerPointcloudPolicy(**policy_cfg(**overrides))
    with torch.no_grad():   # the original init zeroes adaLN and the last layer: make the net non-trivial
        for param in policy.model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    policy.set_normalizer(fitted_normalizer())
    return policy.eval()


def random_obs(batch: int = 2, n_points: int = 32, n_frames: int = 2) -> dict:
    gen = torch.Generator().manual_seed(1)
    return {"point_cloud": torch.rand(batch, n_frames, n_points, 6, generator=gen),
            "robot0_eef_pos": torch.rand(batch, n_frames, 3, generator=gen),
            "robot0_eef_quat": torch.rand(batch, n_frames, 4, generator=gen),
            "robot0_gripper_qpos": torch.rand(batch, n_frames, 2, generator=gen) * 0.04}


def test_mimicgen_size_has_the_original_checkpoint_layout():
    """The original MimicGen config: 284 keys (normalizer aside), 181.8M parameters, encoder 0.25M."""
    with torch.device("meta"):
        policy = ManiFlowTransformerPointcloudPolicy(**policy_cfg(n_points=1024, n_layer=12, n_head=8, n_emb=768,
                                                                  embed=128, enc=128))
    state = policy.state_dict()
    assert len(state) == 284
    assert sum(p.numel() for p in policy.parameters()) == 181_840_906
    expected = {"_dummy_variable": (0,), "model.pos_emb": (1, 16, 768), "model.vis_cond_pos_embed": (1, 2048, 768),
                "obs_encoder.extractor.mlp.0.weight": (64, 6), "obs_encoder.extractor.mlp.9.weight": (512, 256),
                "obs_encoder.extractor.final_projection.1.weight": (128,), "obs_encoder.state_mlp.0.weight": (64, 9),
                "obs_encoder.state_mlp.2.weight": (64, 64), "model.vis_cond_obs_emb.weight": (768, 192),
                "model.flow_timestep_encoder.1.weight": (512, 128), "model.timestep_target_t_adaptor.weight": (768, 1536),
                "model.blocks.11.self_attn.in_proj_weight": (2304, 768), "model.blocks.0.cross_attn.kv.weight": (1536, 768),
                "model.blocks.0.cross_attn.q_norm.weight": (96,), "model.blocks.0.mlp.fc1.weight": (3072, 768),
                "model.blocks.0.adaLN_modulation.1.weight": (6912, 768), "model.final_layer.norm_final.weight": (768,),
                "model.final_layer.ffn_final.fc2.weight": (10, 768)}
    assert {k: tuple(state[k].shape) for k in expected} == expected
    assert sum(p.numel() for p in policy.obs_encoder.parameters()) == 244_992


def test_time_convention_must_be_stated():
    for bad in (None, "t0_data_t1_noise"):
        with pytest.raises(ValueError, match="t0_noise_t1_data") as err:
            ManiFlowTransformerPointcloudPolicy(**policy_cfg(time_convention=bad))
        assert "t1_noise_t0_data" in str(err.value)


def test_unsupported_and_unknown_options_are_refused():
    with pytest.raises(ValueError, match="use_canonicalization"):
        ManiFlowTransformerPointcloudPolicy(**policy_cfg(use_canonicalization=True))
    with pytest.raises(TypeError, match="typo_option"):
        ManiFlowTransformerPointcloudPolicy(**policy_cfg(typo_option=1))


def test_predict_action_shapes_and_executed_slice():
    policy = tiny_policy()
    noise = torch.randn(2, 16, 10)
    out = policy.predict_action(random_obs(), noise)
    assert out["action"].shape == (2, 8, 10) and out["action_pred"].shape == (2, 16, 10)
    torch.testing.assert_close(out["action"], out["action_pred"][:, 1:9])     # n_obs_steps - 1 = 1
    torch.testing.assert_close(policy.predict_action(random_obs(), noise)["action_pred"], out["action_pred"])


def test_agent_pos_of_our_envs_is_split_into_the_robosuite_keys():
    """Our env's agent_pos = eef pos (3) + grip-site quat (4) + gripper (2); the policy turns it into the
    original's three keys (the quaternion conversion is checked against robosuite in test_maniflow_env.py)."""
    policy = tiny_policy()
    obs = random_obs()
    noise = torch.randn(2, 16, 10)
    agent_pos = torch.cat([obs["robot0_eef_pos"], obs["robot0_eef_quat"], obs["robot0_gripper_qpos"]], -1)
    ours = {"point_cloud": obs["point_cloud"], "privileged": torch.zeros(2, 2, 5), "agent_pos": agent_pos}
    theirs = {"point_cloud": obs["point_cloud"], **agent_pos_to_robosuite_state(agent_pos)}
    torch.testing.assert_close(theirs["robot0_eef_pos"], obs["robot0_eef_pos"])
    torch.testing.assert_close(policy.predict_action(ours, noise)["action"], policy.predict_action(theirs, noise)["action"])


def test_colour_channels_are_normalized_then_used_or_dropped():
    obs = random_obs()
    no_colour = tiny_policy(use_pc_color=False)
    assert no_colour.state_dict()["obs_encoder.extractor.mlp.0.weight"].shape == (64, 3)
    assert "obs_encoder.extractor.mlp.9.weight" not in no_colour.state_dict()
    recoloured = dict(obs, point_cloud=torch.cat([obs["point_cloud"][..., :3], torch.rand_like(obs["point_cloud"][..., 3:])], -1))
    noise = torch.randn(2, 16, 10)
    torch.testing.assert_close(no_colour.predict_action(recoloured, noise)["action"], no_colour.predict_action(obs, noise)["action"])
    colour = tiny_policy()
    assert not torch.allclose(colour.predict_action(recoloured, noise)["action"], colour.predict_action(obs, noise)["action"])


def test_sampling_direction_per_convention():
    """Same weights: t0_noise_t1_data integrates t = 0, 1/K, ... upward with target t = dt, the fork
    t = 1, (K-1)/K, ... downward with target t = 0; the two give different actions."""
    up = tiny_policy()
    fork = tiny_policy(time_convention="t1_noise_t0_data")
    fork.load_state_dict(up.state_dict())
    seen = []
    for policy in (up, fork):
        calls = []
        policy.model.register_forward_pre_hook(lambda _m, args: calls.append((float(args[1][0]), float(args[2][0]))))
        noise = torch.randn(2, 16, 10, generator=torch.Generator().manual_seed(3))
        seen.append((calls, policy.predict_action(random_obs(), noise)["action"]))
    assert seen[0][0] == [(0.0, 0.25), (0.25, 0.25), (0.5, 0.25), (0.75, 0.25)]   # k / 4: exact in float32
    assert seen[1][0] == [(1.0, 0.0), (0.75, 0.0), (0.5, 0.0), (0.25, 0.0)]
    assert not torch.allclose(seen[0][1], seen[1][1])


@pytest.mark.parametrize("convention", CONVENTION_NAMES)
def test_compute_loss_trains(convention):
    policy = tiny_policy(time_convention=convention).train()
    ema = copy.deepcopy(policy)
    obs = random_obs(batch=8)
    batch = {"obs": obs, "action": torch.rand(8, 16, 10) * 2 - 1}
    loss, info = policy.compute_loss(batch, ema)
    loss.backward()
    assert torch.isfinite(loss) and set(info) == {"loss", "loss_flow", "loss_consistency"}
    assert policy.model.input_emb.weight.grad.abs().sum() > 0
    assert policy.obs_encoder.extractor.mlp[0].weight.grad.abs().sum() > 0
    # the fork trains flow-only (its consistency loss is disabled); upstream adds the consistency term
    assert (info["loss_consistency"] == 0.0) == (convention == "t1_noise_t0_data")
    assert all(p.grad is None for p in ema.parameters())


def test_normalizer_fit_layout_and_strict_reload():
    data = {"action": np.stack([np.linspace(-2, 3, 50), np.full(50, 0.5)], -1), "image": np.random.rand(50, 1)}
    norm = EquidiffNormalizer.fit(data, modes={"image": "identity"})
    y = norm["action"].normalize(torch.as_tensor(data["action"], dtype=torch.float32))
    assert y[:, 0].min() == pytest.approx(-1) and y[:, 0].max() == pytest.approx(1)
    assert torch.allclose(y[:, 1], torch.zeros(50))          # constant dim: centred, unit scale
    assert norm["action"].scale[1] == 1.0
    keys = set(norm.state_dict())
    assert {"params_dict.action.scale", "params_dict.action.offset", "params_dict.action.input_stats.min",
            "params_dict.action.input_stats.std", "params_dict.image.input_stats.mean"} <= keys
    fresh = EquidiffNormalizer()
    fresh.load_state_dict(norm.state_dict(), strict=True)
    torch.testing.assert_close(fresh["action"].unnormalize(y), torch.as_tensor(data["action"], dtype=torch.float32))
    assert list(fresh.parameters()) == []                     # statistics, not trainable weights


def test_farthest_point_sampling_is_greedy_from_point_zero():
    points = torch.rand(2, 200, 3, generator=torch.Generator().manual_seed(0))
    idx = farthest_point_sample(points, 16)
    assert idx.shape == (2, 16) and (idx[:, 0] == 0).all()
    for b in range(2):
        for i in range(1, 16):
            chosen = points[b, idx[b, :i]]
            min_dist = torch.cdist(points[b], chosen).min(dim=1).values
            assert idx[b, i] == min_dist.argmax()


def test_encoder_downsamples_only_above_num_points():
    policy = tiny_policy()
    assert policy.encode_obs(random_obs(n_points=32)).shape == (2, 2 * 32, 16 + 64)
    assert policy.encode_obs(random_obs(n_points=50)).shape == (2, 2 * 32, 16 + 64)
