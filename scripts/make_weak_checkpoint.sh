#!/usr/bin/env bash
# Build a deliberately weak RL start data/checkpoints/lift_d0_weak.ckpt (not shipped; the learning test starts
# from the natural lift_d0_default.ckpt): epoch 10 of a 30-epoch lift_d0 BC run on 100 scripted demos (~0.55
# success), with a +2 cm offset added to the z of every action it outputs (~0.1 success), a deficit PPO must
# find and cancel from the reward. ~35 min on a 2-core CPU (the BC run dominates).
# Usage: bash scripts/make_weak_checkpoint.sh [Z_OFFSET_METRES]
set -euo pipefail
cd "$(dirname "$0")/.."
Z_OFFSET=${1:-0.02}
PY=${PYTHON:-.venv/bin/python}
RUN=data/outputs/bc_lift_100demos
if [ ! -d data/zarr/lift_d0_mesh.zarr ]; then
    $PY scripts/generate_demos.py task_name=lift_d0 n_demos=100 seed=0
    $PY scripts/convert_to_pointcloud.py task_name=lift_d0
fi
$PY scripts/train.py task_name=lift_d0 training.num_epochs=30 training.checkpoint_every=5 training.rollout_every=0 \
    training.resume=false logging.mode=disabled hydra.run.dir="$RUN"
$PY scripts/make_weak_checkpoint.py "$RUN/checkpoints/epoch_0010.ckpt" data/checkpoints/lift_d0_weak.ckpt \
    --offset 0 0 "$Z_OFFSET"
$PY scripts/eval_policy.py checkpoint=data/checkpoints/lift_d0_weak.ckpt n_episodes=40 max_episode_steps=160 \
    n_videos=0 output_dir="$RUN/eval_weak"
