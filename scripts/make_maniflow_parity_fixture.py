"""Write the parity fixture for ManiFlowTransformerPointcloudPolicy by running the ORIGINAL code.

What it makes (``tests/fixtures/``):
  * ``maniflow_original_tiny.ckpt.xz``: a small-config checkpoint written by the original
    ``BaseWorkspace.save_checkpoint`` (``model``, ``ema_model``, ``optimizer``; cfg composed from the
    original ``train_maniflow_pointcloud_workspace.yaml`` + ``task=mimicgen_pc_abs`` with a tiny DiT-X),
    xz-compressed. Its weights are random (the original init zeroes adaLN and the last layer, which
    would make every action equal the noise) and rounded to bfloat16 values so the file compresses;
    ``ema_model`` differs from ``model`` in the last layer, so a loader that takes the wrong one fails.
  * ``maniflow_original_tiny.npz``: fixed observations (``obs_<key>``, B=2, To=2, 1024 x 6 points),
    the initial noise the original drew, and per time convention the original's ``action_<conv>``
    (B, 8, 10) and ``action_pred_<conv>`` (B, 16, 10) from ``predict_action`` with the EMA weights.

The original code is public (github.com/haibo-blip/reinforcement-learning-mimicgen); it is not part
of this repo. To reproduce, outside the repo::

    git clone https://github.com/haibo-blip/reinforcement-learning-mimicgen /tmp/orig/rlmg
    git -C /tmp/orig/rlmg archive 7f11d59 equi_diffpo | (mkdir -p /tmp/orig/pre && tar -x -C /tmp/orig/pre)
    git -C /tmp/orig/rlmg archive 144ddb2 equi_diffpo | (mkdir -p /tmp/orig/fork && tar -x -C /tmp/orig/fork)
    pip install --no-deps --target /tmp/orig/deps timm==1.0.31 einops==0.8.2
    export PYTHONPATH=/tmp/orig/deps          # NOT this repo: the original package is also 'equi_diffpo'
    python scripts/make_maniflow_parity_fixture.py --original /tmp/orig/fork --convention t1_noise_t0_data --write-checkpoint
    python scripts/make_maniflow_parity_fixture.py --original /tmp/orig/pre --convention t0_noise_t1_data

Commit 7f11d59 (2025-10-21) integrates upstream ManiFlow's way (t = 0 noise -> 1 data); 144ddb2 (HEAD,
after the 2026-01-10 flip) the other way. The checkpoint is written with 144ddb2's config (1024 visual
tokens per frame; 7f11d59's config had 256, i.e. farthest-point sampling 1024 -> 256 in the encoder).
Only imports that do not touch these numerics are stubbed: ``torchvision`` (imported by timm at
import time) and ``pytorch3d`` (rotation conversions for the disabled canonicalization, and
farthest-point sampling, which the original skips when N equals its ``num_points``, as here).
"""
from __future__ import annotations

import argparse
import copy
import importlib.abc
import importlib.machinery
import lzma
import os
import pathlib
import shutil
import sys
import tempfile
import types

import numpy as np

FIXTURE = "maniflow_original_tiny"
TINY = ["policy.n_layer=2", "policy.n_head=2", "policy.n_emb=16", "policy.diffusion_timestep_embed_dim=8",
        "policy.diffusion_target_t_embed_dim=8", "policy.encoder_output_dim=16", "policy.num_inference_steps=10",
        "training.device=cpu"]
OBS_KEYS = ("point_cloud", "robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")
BATCH, N_POINTS = 2, 1024


class _Inert:
    """Placeholder for any attribute of a stubbed module; fails loudly if actually used."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError(f"{type(self).__name__}: stubbed dependency called")


class _InertMeta(type):
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _InertMeta(name, (cls,), {})


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves ``torchvision[.*]`` and ``pytorch3d[.*]`` to empty modules of inert placeholders."""

    roots = ("torchvision", "pytorch3d")

    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] in self.roots:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []
        module.__version__ = "0+stub"

        def getattr_(name):
            if name.startswith("__"):
                raise AttributeError(name)
            return _InertMeta(name, (_Inert,), {})
        module.__getattr__ = getattr_
        return module

    def exec_module(self, module):
        pass


def import_original(original: pathlib.Path):
    sys.meta_path.insert(0, _StubFinder())
    sys.path.insert(0, str(original))
    from equi_diffpo.workspace.base_workspace import BaseWorkspace
    import equi_diffpo.policy.maniflow.maniflow_pointcloud_policy as policy_module
    if not pathlib.Path(policy_module.__file__).resolve().is_relative_to(original.resolve()):
        raise SystemExit(f"imported {policy_module.__file__}, not the original under {original}: "
                         "unset PYTHONPATH entries that point at this repo")
    return BaseWorkspace, policy_module


def compose_cfg(original: pathlib.Path):
    from hydra import compose, initialize_config_dir
    with initialize_config_dir(config_dir=str(original / "equi_diffpo" / "config"), version_base=None):
        return compose(config_name="train_maniflow_pointcloud_workspace", overrides=TINY)


def fixed_inputs(horizon: int, action_dim: int, n_obs_steps: int) -> dict:
    rng = np.random.default_rng(0)
    xyz = rng.uniform([-0.3, -0.3, 0.82], [0.3, 0.3, 1.4], (BATCH, n_obs_steps, N_POINTS, 3))
    rgb = rng.uniform(0, 1, (BATCH, n_obs_steps, N_POINTS, 3))
    quat = rng.normal(size=(BATCH, n_obs_steps, 4))
    obs = {"point_cloud": np.concatenate([xyz, rgb], -1),
           "robot0_eef_pos": rng.uniform([-0.2, -0.2, 0.85], [0.2, 0.2, 1.2], (BATCH, n_obs_steps, 3)),
           "robot0_eef_quat": quat / np.linalg.norm(quat, axis=-1, keepdims=True),
           "robot0_gripper_qpos": rng.uniform([0.0, -0.04], [0.04, 0.0], (BATCH, n_obs_steps, 2))}
    return {f"obs_{k}": v.astype(np.float32) for k, v in obs.items()}


def fit_normalizer(original_normalizer_module, normalize_util, cfg):
    """The original dataset's normalizer layout: 'limits' on action, state keys and all 6 point
    channels, the fixed image-range normalizer for the rgb obs key."""
    rng = np.random.default_rng(1)
    n = 500
    data = {"action": np.concatenate([rng.uniform(-0.3, 0.3, (n, 3)) + [0, 0, 1.0], rng.uniform(-1, 1, (n, 6)),
                                      rng.choice([-1.0, 1.0], (n, 1))], -1),
            "robot0_eef_pos": rng.uniform([-0.25, -0.25, 0.8], [0.25, 0.25, 1.25], (n, 3)),
            "robot0_eef_quat": rng.uniform(-1, 1, (n, 4)),
            "robot0_gripper_qpos": rng.uniform([0.0, -0.045], [0.045, 0.0], (n, 2)),
            "point_cloud": np.concatenate([rng.uniform([-0.35, -0.35, 0.8], [0.35, 0.35, 1.45], (n, 3)),
                                           rng.uniform(0, 1, (n, 3))], -1)}
    normalizer = original_normalizer_module.LinearNormalizer()
    normalizer.fit(data={k: v.astype(np.float32) for k, v in data.items()}, last_n_dims=1, mode="limits")
    for key, attr in cfg.task.shape_meta.obs.items():
        if attr.get("type") == "rgb":
            normalizer[key] = normalize_util.get_image_range_normalizer()
    return normalizer


def write_checkpoint(original: pathlib.Path, out_dir: pathlib.Path) -> None:
    import torch
    BaseWorkspace, _ = import_original(original)
    import hydra
    from equi_diffpo.common import normalize_util
    from equi_diffpo.model.common import normalizer as normalizer_module

    class FixtureWorkspace(BaseWorkspace):
        """What the original TrainManiFlowPointcloudWorkspace holds when it checkpoints."""
        include_keys = ["global_step", "epoch"]

        def __init__(self, cfg, output_dir):
            super().__init__(cfg, output_dir=output_dir)
            torch.manual_seed(cfg.training.seed)
            self.model = hydra.utils.instantiate(cfg.policy)
            with torch.no_grad():
                for param in self.model.parameters():
                    param.add_(0.05 * torch.randn_like(param)).copy_(param.bfloat16().float())
            self.model.set_normalizer(fit_normalizer(normalizer_module, normalize_util, cfg))
            self.ema_model = copy.deepcopy(self.model)
            with torch.no_grad():
                fc2 = self.ema_model.model.final_layer.ffn_final.fc2.weight
                fc2.copy_((fc2 + 0.05 * torch.randn_like(fc2)).bfloat16().float())
            self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.optimizer.lr)
            self.global_step, self.epoch = 0, 0

    cfg = compose_cfg(original)
    with tempfile.TemporaryDirectory() as tmp:
        workspace = FixtureWorkspace(cfg, output_dir=tmp)
        path = workspace.save_checkpoint(path=os.path.join(tmp, "latest.ckpt"), use_thread=False)
        with open(path, "rb") as src, lzma.open(out_dir / f"{FIXTURE}.ckpt.xz", "wb", preset=9) as dst:
            shutil.copyfileobj(src, dst)
    inputs = fixed_inputs(cfg.horizon, cfg.task.shape_meta.action.shape[0], cfg.n_obs_steps)
    np.savez_compressed(out_dir / f"{FIXTURE}.npz", **inputs)
    print(f"wrote {out_dir / (FIXTURE + '.ckpt.xz')} and the inputs in {out_dir / (FIXTURE + '.npz')}")


def record_outputs(original: pathlib.Path, convention: str, out_dir: pathlib.Path) -> None:
    """Load the fixture checkpoint with the original code and record its EMA policy's actions."""
    import dill
    import torch
    _, policy_module = import_original(original)
    import hydra
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "latest.ckpt")
        with lzma.open(out_dir / f"{FIXTURE}.ckpt.xz", "rb") as src, open(path, "wb") as dst:
            shutil.copyfileobj(src, dst)
        payload = torch.load(path, pickle_module=dill, weights_only=False)
    policy = hydra.utils.instantiate(payload["cfg"].policy)
    if not isinstance(policy, policy_module.ManiFlowTransformerPointcloudPolicy):
        raise SystemExit(f"cfg.policy built {type(policy)}")
    policy.load_state_dict(payload["state_dicts"]["ema_model"], strict=True)
    policy.eval()
    fixture = dict(np.load(out_dir / f"{FIXTURE}.npz"))
    obs = {k: torch.from_numpy(fixture[f"obs_{k}"]) for k in OBS_KEYS}
    draws = []
    randn = torch.randn

    def recording_randn(*args, **kwargs):
        draws.append(randn(*args, **kwargs))
        return draws[-1]
    torch.randn = recording_randn
    try:
        torch.manual_seed(0)
        with torch.no_grad():
            result = policy.predict_action(obs)
    finally:
        torch.randn = randn
    if len(draws) != 1:
        raise SystemExit(f"expected one noise draw in predict_action, saw {len(draws)}")
    if "noise" in fixture and not np.array_equal(fixture["noise"], draws[0].numpy()):
        raise SystemExit("this run drew a different initial noise than the fixture's")
    fixture["noise"] = draws[0].numpy()
    fixture[f"action_{convention}"] = result["action"].numpy()
    fixture[f"action_pred_{convention}"] = result["action_pred"].numpy()
    np.savez_compressed(out_dir / f"{FIXTURE}.npz", **fixture)
    print(f"{convention}: action {tuple(result['action'].shape)}, |action| max {result['action'].abs().max():.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--original", type=pathlib.Path, required=True,
                        help="folder holding the original code's equi_diffpo/ (an export of one commit)")
    parser.add_argument("--convention", required=True, choices=["t0_noise_t1_data", "t1_noise_t0_data"],
                        help="the time direction of that commit (7f11d59: t0_noise_t1_data; 144ddb2: t1_noise_t0_data)")
    parser.add_argument("--out-dir", type=pathlib.Path, default=pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures")
    parser.add_argument("--write-checkpoint", action="store_true", help="(re)write the checkpoint and inputs first")
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.write_checkpoint:
        write_checkpoint(args.original, args.out_dir)
    record_outputs(args.original, args.convention, args.out_dir)


if __name__ == "__main__":
    main()
