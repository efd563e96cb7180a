"""Deliberately weak starting point for RL: a checkpoint whose actions carry a fixed position offset.

    python scripts/make_weak_checkpoint.py data/checkpoints/lift_d0_default.ckpt data/checkpoints/lift_d0_weak.ckpt --offset 0 0 0.03

The policy is unchanged except that every action it outputs is shifted by ``--offset`` (raw action
units: metres for the first three, the end-effector position), as after a calibration shift between
demonstration and deployment. RL has to find and cancel the shift from the task reward alone, which
makes a clear, reproducible learning check (``tests/test_rl_learning.py``).
"""
import argparse
import os

from equi_diffpo.common.checkpoint_io import offset_actions_checkpoint

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src")
    parser.add_argument("dst")
    parser.add_argument("--offset", type=float, nargs="+", required=True, help="added to action dims 0.. (metres)")
    args = parser.parse_args()
    path = offset_actions_checkpoint(args.src, args.dst, args.offset)
    print(f"wrote {path} ({os.path.getsize(path) / 2**20:.1f} MiB), action offset {args.offset}")
