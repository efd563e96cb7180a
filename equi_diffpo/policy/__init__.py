"""Policies: the ManiFlow point-cloud flow policy (BC) and its stochastic RL views (PPO), one class per method."""
from equi_diffpo.policy.maniflow_pointcloud_policy import TIME_CONVENTION, ManiFlowPointcloudPolicy
from equi_diffpo.policy.rl_policy_base import LogProbResult, RLPolicyBase, RLSample

__all__ = ["TIME_CONVENTION", "ManiFlowPointcloudPolicy", "RLPolicyBase", "RLSample", "LogProbResult"]
