"""Parity with the original ManiFlow code: a checkpoint it wrote loads strictly and acts as it did.

Fixture (``tests/fixtures/maniflow_original_tiny.*``, made by ``scripts/make_maniflow_parity_fixture.py``
from the public original code): a tiny-DiT-X checkpoint written by the original
``BaseWorkspace.save_checkpoint``, fixed observations (B=2, To=2, 1024 x 6 points + the three
robosuite state keys), the initial noise the original drew, and the original's ``action`` (8 executed
steps) and ``action_pred`` (all 16) with its EMA weights, for both time conventions (commit
7f11d59 integrates t0_noise_t1_data, 144ddb2 t1_noise_t0_data).
"""
from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch

from equi_diffpo.common.checkpoint_io import CheckpointError, load_payload, load_policy
from equi_diffpo.policy.maniflow.maniflow_pointcloud_policy import ManiFlowTransformerPointcloudPolicy

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def reference() -> dict:
    return dict(np.load(FIXTURES / "maniflow_original_tiny.npz"))


def _predict(policy, reference: dict) -> dict:
    obs = {k[len("obs_"):]: torch.from_numpy(v) for k, v in reference.items() if k.startswith("obs_")}
    return {k: v.numpy() for k, v in policy.eval().predict_action(obs, torch.from_numpy(reference["noise"])).items()}


@pytest.mark.parametrize("convention", ["t0_noise_t1_data", "t1_noise_t0_data"])
def test_original_checkpoint_acts_like_the_original(original_checkpoint, reference, convention):
    policy, cfg, _ = load_policy(original_checkpoint, time_convention=convention)
    assert isinstance(policy, ManiFlowTransformerPointcloudPolicy)
    assert cfg.policy.time_convention == convention           # recorded for whoever saves it next
    out = _predict(policy, reference)
    for key, shape in (("action", (2, 8, 10)), ("action_pred", (2, 16, 10))):
        expected = reference[f"{key}_{convention}"]
        assert out[key].shape == expected.shape == shape
        err = float(np.abs(out[key] - expected).max())
        print(f"{convention} {key}: max abs error {err:.2e} (values up to {np.abs(expected).max():.2f})")
        assert err < TOLERANCE


def test_original_checkpoint_layout_and_strict_keys(original_checkpoint):
    payload = load_payload(original_checkpoint)
    assert set(payload["state_dicts"]) == {"model", "ema_model", "optimizer"}
    assert set(payload["pickles"]) == {"global_step", "epoch", "_output_dir"}
    policy, _, _ = load_policy(original_checkpoint, time_convention="t0_noise_t1_data")
    assert set(policy.state_dict()) == set(payload["state_dicts"]["ema_model"])
    assert "normalizer.params_dict.robot0_eye_in_hand_image.input_stats.std" in policy.state_dict()


def test_original_checkpoint_needs_a_stated_time_convention(original_checkpoint):
    with pytest.raises(CheckpointError, match="t0_noise_t1_data.*t1_noise_t0_data"):
        load_policy(original_checkpoint)


def test_the_fixture_tells_ema_from_model(original_checkpoint, reference):
    """The fixture's ``model`` differs from ``ema_model`` in its last layer: loading the wrong one fails parity."""
    policy, _, _ = load_policy(original_checkpoint, time_convention="t0_noise_t1_data", prefer_ema=False)
    assert np.abs(_predict(policy, reference)["action"] - reference["action_t0_noise_t1_data"]).max() > 100 * TOLERANCE
