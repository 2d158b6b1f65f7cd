"""Maps the top-level folders onto the ``bmengine`` import namespace.

The product owner asked for ``engine/``, ``training/`` and ``kernels/`` at the top of the repository
but imports under ``bmengine.*`` (bare ``engine``/``training`` names collide with other packages).
"""

from setuptools import find_packages, setup

PARTS = ("engine", "training", "kernels")

packages = []
for part in PARTS:
    packages.append(f"bmengine.{part}")
    packages += [f"bmengine.{part}.{sub}" for sub in find_packages(part)]

setup(packages=packages, package_dir={f"bmengine.{part}": part for part in PARTS})
