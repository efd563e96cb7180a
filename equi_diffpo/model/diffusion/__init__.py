"""Velocity networks of the original ManiFlow checkpoints (DiT-X transformer)."""
