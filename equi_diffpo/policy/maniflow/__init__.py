"""The original ManiFlow point-cloud policy, under the module path its checkpoints name
(``equi_diffpo.policy.maniflow.maniflow_pointcloud_policy.ManiFlowTransformerPointcloudPolicy``)."""
