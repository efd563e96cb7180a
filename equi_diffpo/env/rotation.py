"""Rotation conversions for the policy's action space.

Why rot6d: robosuite's absolute OSC_POSE takes an axis-angle orientation. A top-down grasp sits at
|angle| ~= pi, where axis-angle flips sign discontinuously, so a network regressing it averages two
far-apart targets. The policy therefore predicts the continuous 6-d representation (first two
columns of the rotation matrix, Zhou et al. 2019) and the env wrapper converts to axis-angle.
Action layout: policy 10-d = pos(3) + rot6d(6) + gripper(1); robosuite 7-d = pos(3) + axis-angle(3) + gripper(1).
"""
from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

POLICY_ACTION_DIM = 10
ENV_ACTION_DIM = 7


def rot6d_to_matrix(rot6d: np.ndarray) -> np.ndarray:
    """(..., 6) -> (..., 3, 3) via Gram-Schmidt on the two stored columns."""
    a1, a2 = rot6d[..., 0:3], rot6d[..., 3:6]
    b1 = a1 / np.clip(np.linalg.norm(a1, axis=-1, keepdims=True), 1e-8, None)
    a2 = a2 - (b1 * a2).sum(-1, keepdims=True) * b1
    b2 = a2 / np.clip(np.linalg.norm(a2, axis=-1, keepdims=True), 1e-8, None)
    b3 = np.cross(b1, b2)
    return np.stack([b1, b2, b3], axis=-1)


def matrix_to_rot6d(mat: np.ndarray) -> np.ndarray:
    """(..., 3, 3) -> (..., 6): the first two columns, concatenated."""
    return np.concatenate([mat[..., :, 0], mat[..., :, 1]], axis=-1)


def rot6d_rows_to_columns(action: np.ndarray) -> np.ndarray:
    """(..., 10) action whose rot6d holds the first two ROWS of the rotation matrix (pytorch3d's
    ``matrix_to_rotation_6d``: the original ManiFlow / equidiff data) -> the same action in our layout
    (columns). Gram-Schmidt as pytorch3d's ``rotation_6d_to_matrix``, which builds the rows."""
    mat = np.swapaxes(rot6d_to_matrix(action[..., 3:9]), -1, -2)
    return np.concatenate([action[..., :3], matrix_to_rot6d(mat), action[..., 9:]], axis=-1)


def env_rot6d(action: np.ndarray, action_rot6d: str) -> np.ndarray:
    """A policy's (..., 10) action in its ``action_rot6d`` layout (``'rows'``: the original ManiFlow's,
    ``'columns'``: ours) -> the action in our envs' layout (columns); the evaluator and the RL collector
    both execute through it."""
    if action_rot6d not in ("rows", "columns"):
        raise ValueError(f"action_rot6d={action_rot6d!r}; use 'rows' or 'columns'")
    return rot6d_rows_to_columns(action) if action_rot6d == "rows" else action


def env_action_to_policy_action(action: np.ndarray) -> np.ndarray:
    """(..., 7) robosuite absolute action -> (..., 10) policy action."""
    mat = Rotation.from_rotvec(action[..., 3:6].reshape(-1, 3)).as_matrix().reshape(*action.shape[:-1], 3, 3)
    return np.concatenate([action[..., :3], matrix_to_rot6d(mat), action[..., 6:7]], axis=-1).astype(np.float32)


def policy_action_to_env_action(action: np.ndarray) -> np.ndarray:
    """(..., 10) policy action -> (..., 7) robosuite absolute action (gripper clipped to [-1, 1])."""
    mat = rot6d_to_matrix(action[..., 3:9])
    rotvec = Rotation.from_matrix(mat.reshape(-1, 3, 3)).as_rotvec().reshape(*action.shape[:-1], 3)
    return np.concatenate([action[..., :3], rotvec, np.clip(action[..., 9:10], -1.0, 1.0)], axis=-1)
