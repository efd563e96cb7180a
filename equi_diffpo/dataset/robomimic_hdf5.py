"""Reading and writing demos in the robomimic hdf5 layout (the interchange format).

Layout: ``data/demo_<i>/{actions (T,7), states (T,S), rewards (T,), dones (T,), obs/<key> (T,...)}``,
``data`` attrs ``env_args`` (JSON: env_name, env_kwargs, type) and ``total``; per demo attrs
``num_samples`` and ``model_file`` (the MJCF the states refer to). Files written by robomimic /
MimicGen tools share it, so the converter reads those too, and robosuite's own
``gather_demonstrations_as_hdf5`` files (``data`` attrs ``env`` + ``env_info`` instead of
``env_args``, no obs). Their actions may be delta OSC (:mod:`equi_diffpo.dataset.delta_actions`).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Tuple

import h5py
import numpy as np

from equi_diffpo.dataset.delta_actions import controller_configs_of, is_delta_controller


@dataclass
class Demo:
    """One demonstration: ``actions`` (T, 7) robosuite actions (see ``DemoReader.action_mode``), ``states`` (T, S)."""
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
        self.path = path
        self.env_args: Dict[str, Any] = self._env_args()
        self.names: List[str] = sorted((k for k in self.file["data"].keys() if k.startswith("demo")), key=_demo_index)

    def __len__(self) -> int:
        return len(self.names)

    def _env_args(self) -> Dict[str, Any]:
        """robomimic's ``env_args``; for robosuite's ``gather_demonstrations_as_hdf5`` files, the same
        built from their ``env`` (name) and ``env_info`` (JSON of the make kwargs) attributes."""
        attrs = self.file["data"].attrs if "data" in self.file else {}
        if "env_args" in attrs:
            return json.loads(attrs["env_args"])
        if "env" in attrs:
            info = json.loads(attrs.get("env_info") or "{}")
            return {"env_name": str(attrs["env"]), "type": 1, "source_format": "robosuite_gather",
                    "env_kwargs": {k: v for k, v in info.items() if k != "env_name"}}
        raise ValueError(f"{self.path!r} is not a demo file: expected group 'data' with attribute 'env_args' "
                         "(robomimic / MimicGen) or 'env' + 'env_info' (robosuite gather_demonstrations_as_hdf5)")

    @property
    def controller_configs(self) -> Dict[str, Any]:
        return controller_configs_of(self.env_args.get("env_kwargs", {}))

    def action_mode(self) -> Tuple[str, bool]:
        """``(dataset key, delta?)``: robomimic's absolute conversion (equidiff tooling) is ``actions_abs``;
        otherwise ``actions``, delta or absolute as the recorded controller config says."""
        first = self.file["data"][self.names[0]] if self.names else {}
        if "actions_abs" in first:
            return "actions_abs", False
        return "actions", is_delta_controller(self.controller_configs)

    def __getitem__(self, index: int) -> Demo:
        key, _ = self.action_mode()
        name = self.names[index]
        grp = self.file["data"][name]
        for required in (key, "states"):
            if required not in grp:
                raise ValueError(f"{self.path!r}: data/{name} has no {required!r} dataset")
        model = grp.attrs.get("model_file")
        return Demo(name, grp[key][()], grp["states"][()], model if isinstance(model, str) else None)

    def __iter__(self) -> Iterator[Demo]:
        return (self[i] for i in range(len(self)))

    def close(self) -> None:
        self.file.close()
