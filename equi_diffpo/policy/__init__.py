"""Policies: the ManiFlow point-cloud flow policy (BC) and its stochastic RL view (PPO)."""
from equi_diffpo.policy.maniflow_pointcloud_policy import TIME_CONVENTION, ManiFlowPointcloudPolicy
from equi_diffpo.policy.maniflow_rl_policy import LogProbResult, ManiFlowRLPolicy, RLSample

__all__ = ["TIME_CONVENTION", "ManiFlowPointcloudPolicy", "ManiFlowRLPolicy", "RLSample", "LogProbResult"]
