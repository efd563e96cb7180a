"""robomimic hdf5 (ours, or robomimic/MimicGen's) -> point-cloud zarr for BC training.

    python scripts/convert_to_pointcloud.py task_name=lift_d0
    python scripts/convert_to_pointcloud.py input=demo.hdf5 output=data/zarr/x.zarr task.point_cloud.source=camera
    python scripts/convert_to_pointcloud.py task_name=lift_d0 input=<robosuite demo.hdf5, delta actions> n_workers=2

Accepts our files, robomimic / MimicGen files and robosuite's ``gather_demonstrations_as_hdf5`` files;
delta OSC actions are converted to absolute ones and the per-demo replay errors are printed.
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
    buffer = convert_to_pointcloud(cfg.input, cfg.output, pc_cfg, seed=cfg.seed, max_demos=cfg.max_demos,
                                   n_workers=cfg.n_workers)
    log_summary(cfg, {"data/n_episodes": buffer.n_episodes, "data/n_steps": buffer.n_steps})
    seconds = buffer.attrs["convert_seconds"]
    print(f"wrote {buffer.n_episodes} episodes / {buffer.n_steps} steps to {cfg.output} "
          f"(point_cloud {tuple(buffer['point_cloud'].shape[1:])}, source {pc_cfg.source}) in {seconds:.0f} s "
          f"({buffer.n_episodes / max(seconds, 1e-9):.2f} demos/s, n_workers={cfg.n_workers})")
    errors = buffer.attrs["replay_errors"]
    if errors:
        print("delta actions converted to absolute; one-step replay error per demo (max over steps):")
        for name, (pos, rot) in errors.items():
            print(f"  {name}: pos {pos * 1000:.3f} mm, rot {rot:.5f} rad")
        print(f"  all demos: pos max {max(e[0] for e in errors.values()) * 1000:.3f} mm, "
              f"rot max {max(e[1] for e in errors.values()):.5f} rad")


if __name__ == "__main__":
    main()
