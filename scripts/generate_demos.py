"""Scripted-expert demos as a robomimic-format hdf5.

    python scripts/generate_demos.py task_name=lift_d0 n_demos=100
"""
from omegaconf import DictConfig

from equi_diffpo.common.config_checks import DEMO_RULES, check_config
from equi_diffpo.common.hydra_cli import hydra_entry_point
from equi_diffpo.common.run_logger import log_summary
from equi_diffpo.env.demo_generation import generate_demos


@hydra_entry_point("generate_demos")
def main(cfg: DictConfig) -> None:
    check_config(cfg, DEMO_RULES)
    result = generate_demos(cfg.task.name, cfg.n_demos, cfg.output, seed=cfg.seed,
                            max_attempts=cfg.max_attempts, max_episode_steps=cfg.task.max_episode_steps)
    demos_per_minute = 60 * result.n_demos / result.seconds
    log_summary(cfg, {"demos/n_demos": result.n_demos, "demos/success_rate": result.success_rate,
                      "demos/n_steps": result.n_steps, "perf/demos_per_minute": demos_per_minute})
    print(f"wrote {result.n_demos} demos ({result.n_steps} steps) to {cfg.output}; expert success "
          f"{result.success_rate:.0%} of {result.n_attempts}; {demos_per_minute:.1f} demos/min")


if __name__ == "__main__":
    main()
