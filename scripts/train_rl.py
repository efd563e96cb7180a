"""PPO fine-tuning of a pretrained ManiFlow point-cloud policy.

    python scripts/train_rl.py                                  # lift_d0, shipped default checkpoint
    python scripts/train_rl.py task_name=stack_d0 pretrained_policy_path=... rl_training.num_epochs=50
    torchrun --nproc_per_node=2 scripts/train_rl.py ...         # one rollout collector per rank
"""
from equi_diffpo.common.hydra_cli import workspace_entry_point

main = workspace_entry_point("train_maniflow_pointcloud_rl")

if __name__ == "__main__":
    main()
