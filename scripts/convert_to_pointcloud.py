"""robomimic hdf5 (ours, or robomimic/MimicGen's) -> point-cloud zarr for BC training.

    python scripts/convert_to_pointcloud.py task_name=lift_d0
    python scripts/convert_to_pointcloud.py input=demo.hdf5 output=data/zarr/x.zarr task.point_cloud.source=camera
"""
import hydra
from omegaconf import DictConfig, OmegaConf

from equi_diffpo.common.hydra_cli import CONFIG_DIR, route_task_name
from equi_diffpo.dataset.pointcloud_conversion import convert_to_pointcloud
from equi_diffpo.env.point_cloud import PointCloudConfig


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="convert_to_pointcloud")
def main(cfg: DictConfig) -> None:
    pc_cfg = PointCloudConfig(**OmegaConf.to_container(cfg.task.point_cloud, resolve=True))
    buffer = convert_to_pointcloud(cfg.input, cfg.output, pc_cfg, seed=cfg.seed, max_demos=cfg.max_demos)
    print(f"wrote {buffer.n_episodes} episodes / {buffer.n_steps} steps to {cfg.output} "
          f"(point_cloud {tuple(buffer['point_cloud'].shape[1:])}, source {pc_cfg.source})")


if __name__ == "__main__":
    route_task_name()
    main()
