#!/usr/bin/env bash
# Reproduce the shipped default checkpoint data/checkpoints/lift_d0_default.ckpt from scratch:
# scripted demos -> point-cloud zarr -> ManiFlow BC -> slim export (cfg + EMA weights).
# It is deliberately a *short* BC run (a few epochs) so PPO has something to improve; a fully
# trained BC policy is made by scripts/train.py with the default number of epochs.
# ~15 min on a 2-core CPU. Usage: bash scripts/make_default_checkpoint.sh [N_DEMOS] [EPOCHS]
set -euo pipefail
cd "$(dirname "$0")/.."
N_DEMOS=${1:-100}
EPOCHS=${2:-8}
PY=${PYTHON:-.venv/bin/python}
RUN=data/outputs/default_checkpoint_lift_d0
$PY scripts/generate_demos.py task_name=lift_d0 n_demos="$N_DEMOS" seed=0
$PY scripts/convert_to_pointcloud.py task_name=lift_d0
$PY scripts/train.py task_name=lift_d0 training.num_epochs="$EPOCHS" training.checkpoint_every="$EPOCHS" \
    training.rollout_every=0 training.resume=false logging.mode=disabled hydra.run.dir="$RUN"
$PY scripts/export_checkpoint.py "$RUN/checkpoints/latest.ckpt" data/checkpoints/lift_d0_default.ckpt
$PY scripts/eval_policy.py checkpoint=data/checkpoints/lift_d0_default.ckpt n_episodes=50 n_videos=0 \
    output_dir="$RUN/eval_default"
