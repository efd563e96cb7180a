"""Slim a workspace checkpoint to cfg + policy weights (no optimizer), e.g. for shipping.

    python scripts/export_checkpoint.py <run_dir>/checkpoints/latest.ckpt data/checkpoints/lift_d0_default.ckpt
"""
import argparse
import os

from equi_diffpo.common.checkpoint_io import export_policy_checkpoint

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src")
    parser.add_argument("dst")
    args = parser.parse_args()
    path = export_policy_checkpoint(args.src, args.dst)
    print(f"wrote {path} ({os.path.getsize(path) / 2**20:.1f} MiB)")
