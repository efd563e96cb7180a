"""Network-side cost of BC and RL on each device: what moving from CPU to CUDA buys.

Usage: ``python scripts/bench_policy.py [devices=cpu,cuda] [checkpoint=data/checkpoints/lift_d0_default.ckpt]
[batch_sizes=2,8,32] [n_iters=20] [output=bench.json]``

Builds the real RL workspace (``train_maniflow_pointcloud_rl`` config, the checkpoint's own policy)
once per device and times, on synthetic observations of the real shapes (physics excluded; see
``bench_pointcloud.py`` for the env side):

* ``rollout act B``: one rollout-collector policy call for B envs, i.e. ``sample_actions`` (encoder,
  noise prior, K Euler steps) + the critic's value, as ``RLRolloutCollector`` does per chunk;
* ``PPO minibatch``: one PPO minibatch step (log-prob, value, both backward passes, both optimizer
  steps) at the config's ``mini_batch_size``, target-KL stop disabled so every step runs;
* ``BC train step``: flow + consistency loss, backward and AdamW step at ``dataloader.batch_size``.

Prints a markdown table (ms per call, speed-up over the first device); ``output=`` also writes JSON.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Callable, Dict, List

import torch

from equi_diffpo.common.hydra_cli import compose_config, parse_key_values
from equi_diffpo.rl_training.ppo_trainer import PPOBatch

DEFAULTS: Dict[str, str] = {"devices": "cpu,cuda" if torch.cuda.is_available() else "cpu",
                            "checkpoint": "data/checkpoints/lift_d0_default.ckpt",
                            "batch_sizes": "2,8,32", "n_iters": "20", "output": ""}
N_PPO_MINIBATCHES = 4   # minibatches per timed update (ppo_epochs=1)


def compose_rl_cfg(checkpoint: str, device: str):
    return compose_config("train_maniflow_pointcloud_rl", [
        f"pretrained_policy_path={checkpoint}", f"training.device={device}", "logging.mode=disabled",
        "rl_training.ppo_trainer.target_kl=null", "rl_training.ppo_trainer.ppo_epochs=1"])


def synthetic_obs(cfg, n_obs: int, batch: int) -> Dict[str, torch.Tensor]:
    """Raw obs ``{'point_cloud': (B, To, N, point_dim), 'agent_pos': (B, To, agent_pos_dim)}`` in the
    task's crop box: timing depends on shapes only, but values stay in the normalizer's range."""
    task = cfg.task
    lo, hi = (torch.tensor(list(b), dtype=torch.float32) for b in task.point_cloud.bounds)
    xyz = lo + (hi - lo) * torch.rand(batch, n_obs, task.point_cloud.n_points, 3)
    cloud = torch.cat([xyz, torch.rand(batch, n_obs, task.point_cloud.n_points, task.point_dim - 3)], dim=-1)
    return {"point_cloud": cloud, "agent_pos": 0.1 * torch.randn(batch, n_obs, task.agent_pos_dim)}


def time_ms(fn: Callable[[], object], device: torch.device, n_iters: int) -> float:
    """Mean wall time of ``fn`` in ms after 3 warm-up calls, synchronising CUDA around the loop."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(3):
        fn()
    sync()
    start = time.perf_counter()
    for _ in range(n_iters):
        fn()
    sync()
    return 1000.0 * (time.perf_counter() - start) / n_iters


def bench_device(device_name: str, checkpoint: str, batch_sizes: List[int], n_iters: int) -> Dict[str, float]:
    from equi_diffpo.rl_training.rl_workspace import RLWorkspace
    from equi_diffpo.common.checkpoint_io import load_policy

    cfg = compose_rl_cfg(checkpoint, device_name)
    ws = RLWorkspace(cfg, output_dir=os.path.join("data", "outputs", "bench_policy"))
    device, policy, critic, n_obs = ws.device, ws.rl_policy, ws.critic, ws.model.n_obs_steps
    rows: Dict[str, float] = {}
    policy.eval()
    critic.eval()
    for b in batch_sizes:
        obs = {k: v.to(device) for k, v in synthetic_obs(cfg, n_obs, b).items()}

        def act() -> None:
            with torch.no_grad():
                policy.sample_actions(obs)
                critic(obs)
        rows[f"rollout act B={b}"] = time_ms(act, device, n_iters)

    mb = cfg.rl_training.ppo_trainer.mini_batch_size
    obs = {k: v.to(device) for k, v in synthetic_obs(cfg, n_obs, mb * N_PPO_MINIBATCHES).items()}
    with torch.no_grad():
        sample = policy.sample_actions(obs)
        values = critic(obs)
    n = values.shape[0]
    batch = PPOBatch(obs=obs, chains=sample.chains, log_probs=sample.log_prob, values=values,
                     advantages=torch.randn(n, device=device), returns=values + torch.randn(n, device=device))
    policy.train()
    critic.train()
    rows[f"PPO minibatch ({mb})"] = time_ms(lambda: ws.trainer.update(batch, epoch=5), device,
                                            max(1, n_iters // N_PPO_MINIBATCHES)) / N_PPO_MINIBATCHES

    bc_policy, _, _ = load_policy(checkpoint, device)
    optimizer = torch.optim.AdamW(bc_policy.parameters(), lr=1e-4)
    bs = compose_config("train_maniflow_pointcloud").dataloader.batch_size   # the BC config's batch
    bc_batch = {"obs": {k: v.to(device) for k, v in synthetic_obs(cfg, n_obs, bs).items()},
                "action": torch.randn(bs, bc_policy.horizon, cfg.task.action_dim, device=device)}

    def bc_step() -> None:
        loss, _ = bc_policy.compute_loss(bc_batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    rows[f"BC train step ({bs})"] = time_ms(bc_step, device, n_iters)
    return rows


def main(argv: List[str]) -> None:
    args = parse_key_values(argv, DEFAULTS)
    if not os.path.exists(args["checkpoint"]):
        raise SystemExit(f"checkpoint={args['checkpoint']} does not exist (bash scripts/make_default_checkpoint.sh)")
    devices = [d for d in args["devices"].split(",") if d]
    batch_sizes = [int(b) for b in args["batch_sizes"].split(",")]
    results = {d: bench_device(d, args["checkpoint"], batch_sizes, int(args["n_iters"])) for d in devices}
    names = list(results[devices[0]])
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} CPU threads, GPU: {gpu}")
    header = ["op"] + [f"{d} ms" for d in devices] + [f"{d} speed-up" for d in devices[1:]]
    print("| " + " | ".join(header) + " |\n" + "|---" * len(header) + "|")
    for name in names:
        ms = [results[d][name] for d in devices]
        cells = [name] + [f"{m:.2f}" for m in ms] + [f"{ms[0] / m:.1f}x" for m in ms[1:]]
        print("| " + " | ".join(cells) + " |")
    if args["output"]:
        with open(args["output"], "w") as f:
            json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(), "gpu": gpu,
                       "ms": results}, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
