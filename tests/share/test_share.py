"""Sharing, end to end, in fresh virtual environments (``make test-bundle-share``; marker ``share``).

1. The packaged bundle (``scripts/package_bundle.py``), unzipped, passes the model zoo's checks that need
   no network (``scripts/check_zoo_bundle.py``) in an environment holding only what its metadata asks
   for: ``monai``, ``torch``, ``numpy`` and ``required_packages_version`` at their pinned versions, plus
   the zoo CI's tools ``jsonschema`` and ``pyyaml``; ``PYTHONPATH`` unset, the repository not importable.
2. ``python -m build`` gives an sdist and a wheel; the wheel, installed in an environment of its own,
   runs ``detect`` on a sample with the bundle it carries and finds what this checkout finds.

The environments live under ``.venvs/`` (``MSSN_BUNDLE_VENV``, default ``.venvs/bundle``;
``MSSN_WHEEL_VENV``, default ``.venvs/wheel``; ``.venvs/build`` holds ``build``) and are kept between runs;
each is made again when what it must hold changes (a hash of its requirements is stored in it). The
interpreter is ``MSSN_SHARE_PYTHON`` (default: the one running the tests, outside its venv). The metadata
schema is read from ``MSSN_BUNDLE_SCHEMA`` (default ``../shared/schema/meta_schema_20240725.json``): no network.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.share
TOOLS = ["jsonschema", "pyyaml"]  # the zoo CI's own tools (verify_metadata, large_files.yml)


def _python() -> str:
    return os.environ.get("MSSN_SHARE_PYTHON") or getattr(sys, "_base_executable", sys.executable)


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS", "1")
    return env


def _run(cmd: list, cwd: Path | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    args = [str(c) for c in cmd]
    r = subprocess.run(args, cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def _venv(folder: Path, requirements: list[str], key_extra: str = "") -> Path:
    """``folder`` as a venv holding ``requirements``; made again only when they (or the interpreter) change."""
    python = _python()
    version = subprocess.run([python, "-c", "import sys; print(sys.version)"], capture_output=True, text=True)
    key = hashlib.sha256("\n".join([version.stdout, *requirements, key_extra]).encode()).hexdigest()
    stamp = folder / ".mssn-requirements"
    if stamp.is_file() and stamp.read_text() == key and (folder / "bin" / "python").is_file():
        return folder / "bin" / "python"
    shutil.rmtree(folder, ignore_errors=True)
    _run([python, "-m", "venv", folder])
    _run([folder / "bin" / "python", "-m", "pip", "install", "--quiet", "--upgrade", "pip"])
    if requirements:
        _run([folder / "bin" / "python", "-m", "pip", "install", "--quiet", *requirements], timeout=1800)
    stamp.write_text(key)
    return folder / "bin" / "python"


def bundle_requirements(metadata: dict) -> list[str]:
    """What the zoo's premerge job installs for a bundle (``name==version`` each), plus its tools."""
    pins = [f"monai=={metadata['monai_version']}", f"torch=={metadata['pytorch_version']}"]
    pins.append(f"numpy=={metadata['numpy_version']}")
    pins += [f"{name}=={version}" for name, version in metadata.get("required_packages_version", {}).items()]
    return pins + TOOLS


@pytest.fixture(scope="module")
def schema() -> Path:
    path = Path(os.environ.get("MSSN_BUNDLE_SCHEMA", ROOT.parent / "shared" / "schema" / "meta_schema_20240725.json"))
    assert path.is_file(), f"{path}: no metadata schema; set MSSN_BUNDLE_SCHEMA to a local copy (no network in CI)"
    return path


@pytest.fixture(scope="module")
def packaged(tmp_path_factory) -> tuple[Path, Path]:
    """``scripts/package_bundle.py`` output: ``(OUT/models/<name>, zip)``."""
    out = tmp_path_factory.mktemp("zoo")
    r = subprocess.run(
        [sys.executable, ROOT / "scripts" / "package_bundle.py", "--out", out], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (zip_path,) = out.glob("*.zip")
    return out / "models" / "mssn_mitosis_detection", zip_path


def test_packaged_bundle_passes_zoo_checks_with_published_packages_only(packaged, schema, tmp_path):
    metadata = json.loads((ROOT / "bundle" / "configs" / "metadata.json").read_text())
    python = _venv(Path(os.environ.get("MSSN_BUNDLE_VENV", ROOT / ".venvs" / "bundle")), bundle_requirements(metadata))
    probe = _run([python, "-c", "import importlib.util as u; print(u.find_spec('mssn_monai'))"], cwd=tmp_path)
    assert probe.stdout.strip() == "None"  # only the bundle's own copy can be imported
    zoo = tmp_path / "zoo" / "models"  # a zoo checkout's models/ folder
    with zipfile.ZipFile(packaged[1]) as zf:
        zf.extractall(zoo)
    bundle = zoo / "mssn_mitosis_detection"
    r = _run([python, ROOT / "scripts" / "check_zoo_bundle.py", "--bundle", bundle, "--schema", schema], cwd=tmp_path)
    assert "all zoo checks passed" in r.stdout, r.stdout
    for check in ("files", "code", "metadata", "verify_net_in_out", "torchscript", "properties", "inference"):
        assert f"ok     {check}:" in r.stdout, (check, r.stdout)


def test_check_refuses_a_bundle_that_breaks_the_zoo_rules(packaged, tmp_path):
    """The file rules bite: a re-indented config, CRLF, a missing final newline, a big file, a stray .ts."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from check_zoo_bundle import file_problems
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    bundle = tmp_path / "b"
    shutil.copytree(packaged[0], bundle)
    assert file_problems(bundle) == []
    inference = bundle / "configs" / "inference.json"
    inference.write_text(json.dumps(json.loads(inference.read_text()), indent=2) + "\n")
    (bundle / "docs" / "README.md").write_bytes((bundle / "docs" / "README.md").read_bytes().replace(b"\n", b"\r\n"))
    (bundle / "LICENSE").write_text((bundle / "LICENSE").read_text().rstrip("\n"))
    (bundle / "samples" / "big.bin").write_bytes(b"\0" * (2**20 + 1))
    shutil.copyfile(bundle / "models" / "model.ts", bundle / "models" / "other.ts")
    constants = bundle / "scripts" / "mssn_monai" / "constants.py"
    constants.write_text(constants.read_text() + 'X = 1\n"""An attribute docstring."""\n')
    problems = "\n".join(file_problems(bundle))
    assert "inference.json: not formatted as pretty-format-json" in problems
    assert "README.md: CR or CRLF line endings" in problems
    assert "LICENSE: must end with exactly one newline" in problems
    assert "big.bin: 1048577 bytes > 1024 KiB" in problems
    assert "other.ts: TorchScript outside large_files.yml" in problems
    assert "constants.py:" in problems and "a string at column 0 after the module docstring" in problems


def test_wheel_installs_and_detects_with_the_bundle_it_carries(tmp_path):
    dist = tmp_path / "dist"
    build = _venv(ROOT / ".venvs" / "build", ["build"])
    _run([build, "-m", "build", "--sdist", "--wheel", "--outdir", dist, ROOT], timeout=900)
    (wheel,) = dist.glob("mssn_monai-*.whl")
    (sdist,) = dist.glob("mssn_monai-*.tar.gz")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        requires = [
            line.split(":", 1)[1].strip()
            for line in zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode().splitlines()
            if line.startswith("Requires-Dist:") and "extra ==" not in line
        ]
    assert {
        "mssn_monai/bundle/configs/inference.json",
        "mssn_monai/bundle/models/model.pt",
        "mssn_monai/bundle/models/int8_calibration.json",
    } <= names
    assert not any(n.startswith(("tests/", "mssn_monai/bundle/samples")) for n in names)
    assert not any(r.lower().startswith(("pytest", "nibabel")) for r in requires), requires
    constraints = ["-c", ROOT / "constraints.txt"]  # the CPU torch pin, as the Makefile installs it
    python = _venv(
        Path(os.environ.get("MSSN_WHEEL_VENV", ROOT / ".venvs" / "wheel")),
        [*map(str, constraints), *requires],
        key_extra=(ROOT / "constraints.txt").read_text(),
    )
    _run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--force-reinstall", wheel])
    _run([python, "-m", "pip", "check"])
    where = _run([python, "-c", "from mssn_monai.checkpoints import DEFAULT_BUNDLE as b; print(b)"], cwd=tmp_path)
    installed_bundle = Path(where.stdout.strip())
    assert installed_bundle.parts[-2:] == ("mssn_monai", "bundle") and "site-packages" in installed_bundle.parts

    from mssn_monai.checkpoints import load_detector
    from mssn_monai.constants import DEFAULT_SPACING_UM
    from mssn_monai.data.datalist import load_datalist
    from mssn_monai.io import read_detections_csv, read_image_rgb, write_image

    record = next(r for r in load_datalist(ROOT / "bundle" / "samples" / "datalist.json", "testing") if r["mitoses"])
    x, y = (int(v) for v in record["mitoses"][0])
    crop = read_image_rgb(record["image"])[max(y - 192, 0) : y + 192, max(x - 192, 0) : x + 192]
    write_image(tmp_path / "in" / "crop.png", crop)
    _run([python, "-m", "mssn_monai", "detect", "--input", tmp_path / "in", "--out", tmp_path / "out"], cwd=tmp_path)
    got = read_detections_csv(tmp_path / "out" / "crop.csv")
    expected = load_detector()(crop, DEFAULT_SPACING_UM)["detections"]  # this checkout's detector on the same field
    assert len(got) == len(expected) > 0
    order = lambda p: p[np.lexsort((p[:, 0], p[:, 1]))]  # noqa: E731
    np.testing.assert_allclose(order(np.asarray(got)), order(np.asarray(expected)), atol=1e-4)
    # --int8 with the calibration the wheel carries (tied to its model.pt: a stale one would be refused)
    _run(
        [python, "-m", "mssn_monai", "detect", "--input", tmp_path / "in", "--out", tmp_path / "out8", "--int8"],
        cwd=tmp_path,
    )
    assert json.loads((tmp_path / "out8" / "crop.json").read_text())["settings"]["int8"] is True
    with tarfile.open(sdist) as tf:
        sdist_names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
        assert "bundle/models/model.pt" in sdist_names and "setup.py" in sdist_names
        assert "bundle/models/int8_calibration.json" in sdist_names
