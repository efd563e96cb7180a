"""Scripted-expert demos as a robomimic-format hdf5.

    python scripts/generate_demos.py task_name=lift_d0 n_demos=100
"""
import hydra
from omegaconf import DictConfig

from equi_diffpo.common.hydra_cli import CONFIG_DIR, route_task_name
from equi_diffpo.env.demo_generation import generate_demos


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="generate_demos")
def main(cfg: DictConfig) -> None:
    result = generate_demos(cfg.task.name, cfg.n_demos, cfg.output, seed=cfg.seed,
                            max_attempts=cfg.max_attempts, max_episode_steps=cfg.task.max_episode_steps)
    print(f"wrote {result.n_demos} demos ({result.n_steps} steps) to {cfg.output}; expert success "
          f"{result.success_rate:.0%} of {result.n_attempts}; {60 * result.n_demos / result.seconds:.1f} demos/min")


if __name__ == "__main__":
    route_task_name()
    main()
