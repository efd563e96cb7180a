#!/usr/bin/env bash
# Reproduce data/checkpoints/lift_d0_ppo.ckpt: the README main command (PPO with the default RL config from the
# shipped data/checkpoints/lift_d0_default.ckpt, default seed), in a fixed run dir, then a slim export
# (cfg + fine-tuned policy weights, noise prior included; no optimizer or critic). ~25-30 min on an idle 2-core CPU.
# Env workers are not bit-reproducible (contact physics grows last-bit differences), so a rerun is another sample.
# Usage: bash scripts/make_ppo_checkpoint.sh [extra train_rl.py overrides...]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
RUN=data/outputs/ppo_checkpoint_lift_d0
$PY scripts/train_rl.py task_name=lift_d0 training.resume=true \
    hydra.run.dir="$RUN" "$@"
$PY scripts/export_checkpoint.py "$RUN/checkpoints/latest.ckpt" data/checkpoints/lift_d0_ppo.ckpt
$PY scripts/eval_policy.py checkpoint=data/checkpoints/lift_d0_ppo.ckpt n_episodes=100 n_videos=0 \
    output_dir="$RUN/eval_ppo"
