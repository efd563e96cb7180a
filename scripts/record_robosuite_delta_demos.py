"""Record Lift demos with delta OSC actions using robosuite's own DataCollectionWrapper + gather_demonstrations_as_hdf5.

    python scripts/record_robosuite_delta_demos.py out_dir=data/demos/robosuite_lift n_demos=100 seed=0
Writes ``<out_dir>/demo.hdf5`` as robosuite's collection script does (no env_args, no obs, delta
actions), driven by a scripted state machine instead of a teleoperator; convert it with
``scripts/convert_to_pointcloud.py task_name=lift_d0 input=<out_dir>/demo.hdf5``.
"""
import sys
import time

from equi_diffpo.common.hydra_cli import parse_key_values
from equi_diffpo.env.robosuite_collection import record_lift_delta_demos


def main() -> None:
    args = parse_key_values(sys.argv[1:], {"out_dir": "data/demos/robosuite_lift", "n_demos": "10", "seed": "0"})
    start = time.time()
    path = record_lift_delta_demos(args["out_dir"], int(args["n_demos"]), seed=int(args["seed"]))
    print(f"wrote {path} in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
