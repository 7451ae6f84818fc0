"""tb_stability: why did training blow up? A TensorBoard plugin + writer."""

import os

from setuptools import find_packages, setup

here = os.path.dirname(os.path.abspath(__file__))
version = {}
with open(os.path.join(here, "tb_stability", "version.py")) as f:
    exec(f.read(), version)  # pylint: disable=exec-used

setup(
    name="tb_stability",
    version=version["VERSION"],
    description="Find and explain training instabilities (loss spikes, "
    "divergence, NaN, plateaus) in TensorBoard",
    long_description=open(os.path.join(here, "README.md")).read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["tb_stability", "tb_stability.*"]),
    package_data={"tb_stability": ["static/**/*", "static/*", "*.md", "server/*.md"]},
    python_requires=">=3.9",
    install_requires=[
        "numpy",
        "tensorboard>=2.16",
        "werkzeug",
    ],
    extras_require={
        "tf": ["tensorflow>=2.16"],
        "test": ["pytest", "hypothesis", "ruff==0.17.6"],
    },
    entry_points={
        "console_scripts": [
            "tb-stability = tb_stability.cli:main",
        ],
        "tensorboard_plugins": [
            "tb_stability = tb_stability.server.plugin:StabilityLoader",
        ],
    },
)
