"""PPO fine-tuning of a pretrained ManiFlow point-cloud policy.

    python scripts/train_rl.py                                  # lift_d0, shipped default checkpoint
    python scripts/train_rl.py task_name=stack_d0 pretrained_policy_path=... rl_training.num_epochs=50
    torchrun --nproc_per_node=2 scripts/train_rl.py ...         # one rollout collector per rank
"""
import hydra
from omegaconf import DictConfig, OmegaConf

from equi_diffpo.common.hydra_cli import CONFIG_DIR, route_task_name


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train_maniflow_pointcloud_rl")
def main(cfg: DictConfig) -> None:
    OmegaConf.resolve(cfg)
    workspace = hydra.utils.get_class(cfg._target_)(cfg)
    workspace.run()


if __name__ == "__main__":
    route_task_name()
    main()
