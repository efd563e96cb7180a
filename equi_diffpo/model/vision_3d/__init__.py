"""3-D (point-cloud) observation encoders of the original ManiFlow / DP3 checkpoints."""
