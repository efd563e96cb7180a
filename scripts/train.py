"""BC pretraining of the ManiFlow point-cloud policy (diffusion_policy-style thin entry point).

    python scripts/train.py task_name=lift_d0 training.num_epochs=100 logging.mode=disabled
"""
import hydra
from omegaconf import DictConfig, OmegaConf

from equi_diffpo.common.hydra_cli import CONFIG_DIR, route_task_name


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train_maniflow_pointcloud")
def main(cfg: DictConfig) -> None:
    OmegaConf.resolve(cfg)
    workspace = hydra.utils.get_class(cfg._target_)(cfg)
    workspace.run()


if __name__ == "__main__":
    route_task_name()
    main()
