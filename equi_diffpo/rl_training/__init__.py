"""PPO fine-tuning of a pretrained ManiFlow point-cloud policy.

* :mod:`rl_rollout_collector` — vectorized envs -> chunk-level transitions (whole episodes)
* :mod:`ppo_trainer` — GAE + clipped PPO update (CleanRL-readable)
* :mod:`rl_workspace` — the loop: collect -> update -> log -> validate -> checkpoint
"""
