"""robomimic hdf5 (ours, or robomimic/MimicGen's) -> point-cloud zarr for BC training.

    python scripts/convert_to_pointcloud.py task_name=lift_d0
    python scripts/convert_to_pointcloud.py input=demo.hdf5 output=data/zarr/x.zarr task.point_cloud.source=camera
"""
from omegaconf import DictConfig, OmegaConf

from equi_diffpo.common.config_checks import CONVERT_RULES, check_config
from equi_diffpo.common.errors import input_errors_as_config_errors
from equi_diffpo.common.hydra_cli import hydra_entry_point
from equi_diffpo.common.run_logger import log_summary
from equi_diffpo.dataset.pointcloud_conversion import convert_to_pointcloud
from equi_diffpo.dataset.robomimic_hdf5 import DemoReader
from equi_diffpo.env.point_cloud import PointCloudConfig


@hydra_entry_point("convert_to_pointcloud")
def main(cfg: DictConfig) -> None:
    check_config(cfg, CONVERT_RULES)
    with input_errors_as_config_errors("input", FileNotFoundError, ValueError):   # missing, corrupt, not robomimic
        DemoReader(cfg.input).close()
    pc_cfg = PointCloudConfig(**OmegaConf.to_container(cfg.task.point_cloud, resolve=True))
    buffer = convert_to_pointcloud(cfg.input, cfg.output, pc_cfg, seed=cfg.seed, max_demos=cfg.max_demos)
    log_summary(cfg, {"data/n_episodes": buffer.n_episodes, "data/n_steps": buffer.n_steps})
    print(f"wrote {buffer.n_episodes} episodes / {buffer.n_steps} steps to {cfg.output} "
          f"(point_cloud {tuple(buffer['point_cloud'].shape[1:])}, source {pc_cfg.source})")


if __name__ == "__main__":
    main()
