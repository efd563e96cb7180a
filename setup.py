"""ManiFlow RL: RL fine-tuning of point-cloud flow-matching robot policies (robosuite)."""
from setuptools import find_packages, setup

setup(
    name="equi_diffpo",
    version="0.1.0",
    description="ManiFlow point-cloud flow policy: BC pretraining + PPO fine-tuning on robosuite",
    packages=find_packages(include=["equi_diffpo", "equi_diffpo.*"]),
    package_data={"equi_diffpo": ["config/*.yaml", "config/task/*.yaml"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.1",
        "robosuite==1.5.2",
        "mujoco==3.3.7",
        "numpy>=1.26,<2",
        "numba>=0.59",
        "scipy>=1.11",
        "hydra-core>=1.3,<1.4",
        "omegaconf>=2.3,<2.4",
        "zarr>=2.16,<3",
        "numcodecs<0.16",
        "h5py>=3.9",
        "tqdm>=4.60",
        "wandb>=0.16",
        "dill>=0.3.7",
        "imageio>=2.31",
        "imageio-ffmpeg>=0.4.9",
    ],
    extras_require={
        # Optional: used when importable, never required. Do NOT `pip install mimicgen` from PyPI
        # (unrelated placeholder); install MimicGen from its git repository instead.
        "robomimic": ["robomimic==0.3.0"],
        "test": ["pytest>=7"],
    },
)
