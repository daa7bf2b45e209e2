"""Package discovery only (metadata lives in pyproject.toml).

One distribution, two import packages: `ssa_pretrain` (ssa_pretrain/) and `ssa_kernels` (kernels/).
"""

from setuptools import find_packages, setup

setup(
    package_dir={"ssa_kernels": "kernels", "ssa_pretrain": "ssa_pretrain"},
    packages=find_packages(include=["ssa_pretrain", "ssa_pretrain.*"])
    + ["ssa_kernels"]
    + [f"ssa_kernels.{name}" for name in find_packages("kernels")],
    package_data={"ssa_pretrain": ["hf/*.py"]},
)
