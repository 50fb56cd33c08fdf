"""Build hook: the wheel carries the bundle as package data, ``mssn_monai/bundle``.

Everything else is declared in ``pyproject.toml``. The bundle stays in one place in git (``bundle/``);
building copies its configs, ``models/model.pt`` and its int8 calibration, docs and licence into the
built package, where ``mssn_monai.checkpoints.DEFAULT_BUNDLE`` finds it when there is no source checkout (a wheel user's
``detect``, ``candidates``, ``adapt`` and ``python -m monai.bundle run --bundle_root ...``). The sample
fields (13 MB) stay out of the wheel. ``MANIFEST.in`` puts the same files into the sdist.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

BUNDLE_FILES = (
    "LICENSE",
    "configs/*.json",
    "configs/logging.conf",
    "docs/*.md",
    "docs/*.txt",
    "models/model.pt",
    "models/int8_calibration.json",
)


class BuildPyWithBundle(build_py):
    """``build_py``, then the bundle's files under ``<build>/mssn_monai/bundle``."""

    def run(self) -> None:
        super().run()
        source = Path(__file__).resolve().parent / "bundle"
        target = Path(self.build_lib) / "mssn_monai" / "bundle"
        copied = 0
        for pattern in BUNDLE_FILES:
            for path in sorted(source.glob(pattern)):
                dest = target / path.relative_to(source)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, dest)
                copied += 1
        if not (target / "models" / "model.pt").is_file() or not (target / "configs" / "inference.json").is_file():
            raise FileNotFoundError(f"{source}: configs/inference.json and models/model.pt must be built in")
        print(f"mssn_monai/bundle: {copied} files from {source}")


setup(cmdclass={"build_py": BuildPyWithBundle})
