"""BC pretraining of the ManiFlow point-cloud policy (diffusion_policy-style thin entry point).

    python scripts/train.py task_name=lift_d0 training.num_epochs=100 logging.mode=disabled
"""
from equi_diffpo.common.hydra_cli import workspace_entry_point

main = workspace_entry_point("train_maniflow_pointcloud")

if __name__ == "__main__":
    main()
