"""Reading and writing demos in the robomimic hdf5 layout (the interchange format).

Layout: ``data/demo_<i>/{actions (T,7), states (T,S), rewards (T,), dones (T,), obs/<key> (T,...)}``,
``data`` attrs ``env_args`` (JSON: env_name, env_kwargs, type) and ``total``; per demo attrs
``num_samples`` and ``model_file`` (the MJCF the states refer to). Files written by robomimic /
robosuite / MimicGen tools share it, so the converter reads those too.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List

import h5py
import numpy as np


@dataclass
class Demo:
    """One demonstration: ``actions`` (T, 7) absolute robosuite actions, ``states`` (T, S)."""
    name: str
    actions: np.ndarray
    states: np.ndarray
    model_file: str | None


class DemoWriter:
    """Writes demos one by one; closes cleanly (with ``total`` set) even on Ctrl-C."""

    def __init__(self, path: str, env_args: Dict[str, Any]):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path = path
        self._tmp_path = path + ".partial"
        self.file = h5py.File(self._tmp_path, "w")
        self.data = self.file.create_group("data")
        self.data.attrs["env_args"] = json.dumps(env_args)
        self.total = 0
        self.count = 0

    def add(self, actions: np.ndarray, states: np.ndarray, rewards: np.ndarray, dones: np.ndarray,
            obs: Dict[str, np.ndarray], model_file: str) -> None:
        grp = self.data.create_group(f"demo_{self.count}")
        grp.create_dataset("actions", data=np.asarray(actions, dtype=np.float64))
        grp.create_dataset("states", data=np.asarray(states, dtype=np.float64))
        grp.create_dataset("rewards", data=np.asarray(rewards, dtype=np.float64))
        grp.create_dataset("dones", data=np.asarray(dones, dtype=np.int64))
        for key, value in obs.items():
            grp.create_dataset(f"obs/{key}", data=np.asarray(value))
        grp.attrs["num_samples"] = len(actions)
        grp.attrs["model_file"] = model_file
        self.count += 1
        self.total += len(actions)

    def close(self) -> None:
        """Finalize and move into place (a partial file never masquerades as a complete one)."""
        self.data.attrs["total"] = self.total
        self.file.close()
        os.replace(self._tmp_path, self.path)


def _demo_index(name: str) -> int:
    match = re.fullmatch(r"demo_(\d+)", name)
    return int(match.group(1)) if match else 1 << 30


class DemoReader:
    """Iterates the demos of a robomimic-format file in numeric order, with clear errors."""

    def __init__(self, path: str):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"demo file {path!r} does not exist; make one with "
                                    "`python scripts/generate_demos.py task_name=lift_d0 n_demos=20`")
        try:
            self.file = h5py.File(path, "r")
        except OSError as err:
            raise ValueError(f"{path!r} is not a readable hdf5 file (corrupt or truncated?): {err}") from err
        if "data" not in self.file or "env_args" not in self.file["data"].attrs:
            raise ValueError(f"{path!r} is not in robomimic layout: expected group 'data' with attribute 'env_args'")
        self.path = path
        self.env_args: Dict[str, Any] = json.loads(self.file["data"].attrs["env_args"])
        self.names: List[str] = sorted((k for k in self.file["data"].keys() if k.startswith("demo")), key=_demo_index)

    def __len__(self) -> int:
        return len(self.names)

    def action_key(self) -> str:
        """robomimic's own files hold *delta* actions in ``actions``; their absolute conversion
        (equidiff/robomimic tooling) is ``actions_abs``. Ours are absolute in ``actions``."""
        controller = json.dumps(self.env_args.get("env_kwargs", {}).get("controller_configs", {}))
        first = self.file["data"][self.names[0]] if self.names else {}
        if "actions_abs" in first:
            return "actions_abs"
        if '"input_type": "absolute"' in controller or '"control_delta": false' in controller:
            return "actions"
        raise ValueError(f"{self.path!r} holds delta actions (controller is not absolute) and no 'actions_abs': "
                         "convert it to absolute actions first (robomimic/equidiff abs conversion)")

    def __iter__(self) -> Iterator[Demo]:
        key = self.action_key()
        for name in self.names:
            grp = self.file["data"][name]
            for required in (key, "states"):
                if required not in grp:
                    raise ValueError(f"{self.path!r}: data/{name} has no {required!r} dataset")
            model = grp.attrs.get("model_file")
            yield Demo(name, grp[key][()], grp["states"][()], model if isinstance(model, str) else None)

    def close(self) -> None:
        self.file.close()
