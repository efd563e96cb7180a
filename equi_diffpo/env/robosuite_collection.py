"""Lift demos with *delta* OSC actions, recorded by robosuite's own collection tools.

Why: robosuite users collect demos with ``DataCollectionWrapper`` and merge them with
``gather_demonstrations_as_hdf5`` (robosuite/scripts/collect_human_demonstrations.py): the file has
``data.attrs['env']`` and ``['env_info']`` (JSON: env name, robots, controller config) but no
``env_args``, no obs, and the stock Panda controller (OSC_POSE, delta, base frame). This module makes
such files without a human: a small state machine drives the delta controller (approach above the
cube, descend, close, lift), and robosuite's wrapper and gather function write them, so the
converter is tested on exactly what those tools produce.
"""
from __future__ import annotations

import json
import os
import tempfile

import numpy as np

POS_SCALE = 0.05        # the stock OSC_POSE output_max for position: a delta of 1 moves 5 cm per step
MAX_STEPS = 150


def _delta_towards(goal: np.ndarray, eef: np.ndarray) -> np.ndarray:
    return np.clip((goal - eef) / POS_SCALE, -1.0, 1.0)


def lift_delta_episode(env, rng: np.random.Generator) -> bool:
    """Run one scripted Lift episode on a delta-controller ``env``; True if it lifted the cube."""
    obs = env.reset()
    offset = rng.uniform(-0.005, 0.005, 3)
    phase, closed_steps = "approach", 0
    for _ in range(MAX_STEPS):
        eef, cube = obs["robot0_eef_pos"], obs["cube_pos"] + offset
        grip = -1.0
        if phase == "approach":
            goal = cube + [0, 0, 0.08]
            phase = "descend" if np.linalg.norm(goal - eef) < 0.01 else phase
        elif phase == "descend":
            goal = cube
            phase = "grasp" if np.linalg.norm(goal - eef) < 0.008 else phase
        elif phase == "grasp":
            goal, grip = cube, 1.0
            closed_steps += 1
            phase = "lift" if closed_steps >= 8 else phase
        else:
            goal, grip = cube + [0, 0, 0.25], 1.0
        action = np.concatenate([_delta_towards(goal, eef), np.zeros(3), [grip]])
        obs, _, _, _ = env.step(action)
        if env._check_success():
            for _ in range(3):   # a few steps past success, as a teleoperator would
                obs, _, _, _ = env.step(action)
            return True
    return False


def record_lift_delta_demos(out_dir: str, n_demos: int, seed: int = 0, max_attempts: int | None = None) -> str:
    """Record ``n_demos`` successful Lift demos into ``<out_dir>/demo.hdf5`` with robosuite's tools."""
    import robosuite
    from robosuite.controllers import load_composite_controller_config
    from robosuite.scripts.collect_human_demonstrations import gather_demonstrations_as_hdf5
    from robosuite.wrappers import DataCollectionWrapper

    controller = load_composite_controller_config(controller="BASIC", robot="Panda")
    config = {"env_name": "Lift", "robots": "Panda", "controller_configs": controller}
    env = robosuite.make(**config, has_renderer=False, has_offscreen_renderer=False, use_camera_obs=False,
                         control_freq=20, ignore_done=True, hard_reset=False)
    rng = np.random.default_rng(seed)
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as raw_dir:
        wrapped = DataCollectionWrapper(env, raw_dir)
        successes = 0
        for _ in range(max_attempts or 3 * n_demos):
            successes += lift_delta_episode(wrapped, rng)
            if successes >= n_demos:
                break
        wrapped.reset()          # flushes the last episode to raw_dir
        wrapped.close()
        gather_demonstrations_as_hdf5(raw_dir, out_dir, json.dumps(config))
    return os.path.join(out_dir, "demo.hdf5")
