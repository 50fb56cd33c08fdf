"""Write the MONAI bundle as one zip that runs on its own after unzipping.

The zip holds one folder, ``mssn_mitosis_detection/``, with the bundle (``configs/``, ``models/``,
``docs/``, ``samples/``, ``LICENSE``) and a copy of the ``mssn_monai`` package that the configs import,
so that, from inside the unzipped folder::

    python -m monai.bundle run --config_file configs/inference.json --bundle_root .

runs with only the packages ``configs/metadata.json`` lists installed (``python -m`` puts the current
folder first on ``sys.path``, so the packaged ``mssn_monai`` is the one imported). Resumable training
checkpoints (``models/*_checkpoint_*.pt``), outputs (``eval/``, ``runs/``) and caches are left out.
The zip is written to a temporary file and renamed, so a failed run leaves no partial zip.

Usage::

    python scripts/package_bundle.py [--bundle bundle] [--out dist/mssn_mitosis_detection-<version>.zip]
"""

from __future__ import annotations

import fnmatch
import json
import sys
import zipfile
from pathlib import Path

import fire

REPO = Path(__file__).resolve().parents[1]
BUNDLE_NAME = "mssn_mitosis_detection"
EXCLUDE = ("*_checkpoint_*.pt", "__pycache__", "*.pyc", "eval", "runs", ".*")


def _excluded(path: Path, root: Path) -> bool:
    return any(fnmatch.fnmatch(part, pattern) for part in path.relative_to(root).parts for pattern in EXCLUDE)


def bundle_files(bundle: Path, package: Path) -> list[tuple[Path, str]]:
    """``(source file, name in the zip)`` for every file the packaged bundle holds, sorted by name."""
    files = []
    for root, prefix in ((bundle, BUNDLE_NAME), (package, f"{BUNDLE_NAME}/{package.name}")):
        for path in sorted(root.rglob("*")):
            if path.is_file() and not _excluded(path, root):
                files.append((path, f"{prefix}/{path.relative_to(root).as_posix()}"))
    return sorted(files, key=lambda f: f[1])


def package_bundle(bundle: str | None = None, out: str | None = None) -> str:
    """Write the bundle zip.

    Args:
        bundle: the bundle folder (default: this checkout's ``bundle``).
        out: the zip to write (default ``dist/mssn_mitosis_detection-<version>.zip``).

    Returns:
        the path of the zip.

    Raises:
        FileNotFoundError: the bundle has no ``configs/metadata.json``, ``configs/inference.json`` or
            ``models/model.pt``.
    """
    sys.path.insert(0, str(REPO))
    from mssn_monai.io import atomic_write

    root = Path(bundle) if bundle is not None else REPO / "bundle"
    for needed in ("configs/metadata.json", "configs/inference.json", "models/model.pt"):
        if not (root / needed).is_file():
            raise FileNotFoundError(f"{root / needed}: missing; the bundle cannot run without it")
    version = json.loads((root / "configs" / "metadata.json").read_text())["version"]
    target = Path(out) if out is not None else REPO / "dist" / f"{BUNDLE_NAME}-{version}.zip"
    files = bundle_files(root, REPO / "mssn_monai")
    with atomic_write(target, "wb") as f, zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for source, name in files:
            zf.write(source, name)
    size_mb = target.stat().st_size / 2**20
    print(f"wrote {target} ({len(files)} files, {size_mb:.1f} MB); unzip it, cd {BUNDLE_NAME}, then run")
    print("  python -m monai.bundle run --config_file configs/inference.json --bundle_root .")
    return str(target)


if __name__ == "__main__":
    fire.Fire(package_bundle)
