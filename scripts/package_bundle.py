"""Write the MONAI bundle in the model zoo's layout, and a zip of it, to run with published packages only.

Writes ``OUT/models/<name>/`` (a folder to copy into a model-zoo checkout's ``models/``) and
``OUT/<name>-<version>.zip`` (the same folder, zipped)::

    <name>/
      configs/        the bundle's configs, formatted as the zoo's pretty-format-json hook writes them
      docs/           README.md, data_license.txt
      models/         model.pt and int8_calibration.json (copied), model.ts (exported here from model.pt: never stale)
      samples/        the sample fields (re-encoded as JPEG when a file is over the zoo's 1 MiB limit)
                      and their datalist
      scripts/        __init__.py and a copy of the mssn_monai package: the code the configs import
                      (attribute docstrings turned into #: comments for the zoo's check-docstring-first)
      large_files.yml models/model.pt and models/model.ts (url, md5), as zoo bundles list their weights
      LICENSE

``mssn_monai`` is copied from this checkout at packaging time (one copy in git); the configs'
first import, ``$import scripts``, puts ``scripts/`` on ``sys.path`` (``bundle/scripts/__init__.py``). From
the bundle folder::

    python -m monai.bundle run --config_file configs/inference.json

runs with only ``monai``, ``torch``, ``numpy`` and the packages of ``required_packages_version``
installed. Every text file is written with LF endings, one final newline and no trailing whitespace;
every file other than the weights is at most 1 MiB (``check-added-large-files --maxkb=1024``).

The weights go into the zoo through ``large_files.yml``, not git: pre-commit's ``end-of-file-fixer``
and ``mixed-line-ending`` take ``model.ts`` for TypeScript text and would corrupt it. ``--weights_url``
is the folder the two files are uploaded to; the default is a placeholder that fails loudly
(``https://weights.invalid/...``) until it is replaced.

Usage::

    python scripts/package_bundle.py [--out dist/zoo] [--bundle bundle] [--name mssn_mitosis_detection]
        [--weights_url https://host/folder] [--jpeg_quality 95]

The folder is built beside its target and renamed into place, the zip written to a temporary file
and renamed, so a failed run leaves the previous output as it was.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import fire
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_zoo_bundle import MAX_FILE_BYTES, file_problems, zoo_json_text  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BUNDLE_NAME = "mssn_mitosis_detection"
PLACEHOLDER_URL = "https://weights.invalid/replace-with-the-folder-holding-the-weights"
WEIGHTS = ("models/model.pt", "models/model.ts")
TEXT_COPIED = ("LICENSE", "docs", "configs/logging.conf")
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed: the same inputs give the same zip


def _zoo_text(source: Path) -> str:
    """A text file with LF endings and exactly one final newline; trailing whitespace is refused, not edited."""
    text = source.read_text(encoding="utf-8").replace("\r\n", "\n").replace("\r", "\n")
    bad = [i for i, line in enumerate(text.split("\n"), start=1) if line != line.rstrip()]
    if bad:
        raise ValueError(f"{source}:{bad[0]}: trailing whitespace ({len(bad)} line(s)); remove it in the source")
    return text.rstrip("\n") + "\n"


def _copy_text_tree(source: Path, target: Path) -> None:
    for path in sorted(source.rglob("*") if source.is_dir() else [source]):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            dest = target / path.relative_to(source) if source.is_dir() else target
            dest.parent.mkdir(parents=True, exist_ok=True)
            if path.suffix.lower() in (".png", ".jpg", ".jpeg"):
                shutil.copyfile(path, dest)
            else:
                dest.write_text(_zoo_text(path), encoding="utf-8", newline="\n")


def _write_configs(bundle: Path, target: Path) -> dict:
    """Every JSON config reformatted for the zoo; returns the metadata."""
    (target / "configs").mkdir(parents=True)
    meta = {}
    for path in sorted((bundle / "configs").glob("*.json")):
        content = json.loads(path.read_text(encoding="utf-8"))
        if path.name == "metadata.json":
            meta = content
            unpublished = [
                n for n in content.get("required_packages_version", {}) if n.replace("_", "-") == "mssn-monai"
            ]
            if unpublished:
                raise ValueError(f"{path}: required_packages_version names mssn-monai, which no package index has")
        (target / "configs" / path.name).write_text(zoo_json_text(content), encoding="utf-8", newline="\n")
    return meta


def _write_samples(bundle: Path, target: Path, jpeg_quality: int) -> None:
    """Copy the samples; an image over the zoo's size limit is re-encoded as JPEG and the datalist follows."""
    source = bundle / "samples"
    if not source.is_dir():
        return
    renamed = {}
    for path in sorted(source.rglob("*")):
        if not path.is_file() or path.suffix == ".json":
            continue
        rel = path.relative_to(source)
        dest = target / "samples" / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if path.stat().st_size <= MAX_FILE_BYTES:
            shutil.copyfile(path, dest)
            continue
        dest = dest.with_suffix(".jpg")
        with Image.open(path) as im:
            im.convert("RGB").save(dest, "JPEG", quality=jpeg_quality, subsampling=0)
        if dest.stat().st_size > MAX_FILE_BYTES:
            raise ValueError(f"{path}: still over 1 MiB as JPEG quality {jpeg_quality}; lower --jpeg_quality")
        renamed[rel.as_posix()] = dest.relative_to(target / "samples").as_posix()
    for path in sorted(source.glob("*.json")):
        datalist = json.loads(path.read_text(encoding="utf-8"))
        for records in datalist.values() if isinstance(datalist, dict) else []:
            for record in records if isinstance(records, list) else []:
                if isinstance(record, dict) and record.get("image") in renamed:
                    record["image"] = renamed[record["image"]]
        (target / "samples" / path.name).write_text(zoo_json_text(datalist), encoding="utf-8", newline="\n")


def attribute_docstrings_as_comments(source: str) -> str:
    """Module-level string statements after the first statement (attribute docstrings) as ``#:`` comments.

    The zoo's ``check-docstring-first`` hook takes any string at column 0 after a module's docstring
    for a second module docstring. These statements do nothing at run time, so the copied code runs
    the same; the text stays, as comments.
    """
    tree = ast.parse(source)
    lines = source.split("\n")
    for node in reversed(tree.body[1:]):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            first, last = node.lineno - 1, node.end_lineno
            if lines[first][: node.col_offset].strip() or lines[last - 1][node.end_col_offset :].strip():
                raise ValueError(f"line {node.lineno}: a string statement sharing its lines with other code")
            text = inspect.cleandoc(node.value.value).split("\n")
            lines[first:last] = [f"#: {line}".rstrip() for line in text]
    converted = "\n".join(lines)
    ast.parse(converted)  # still Python
    return converted


def _write_code(target: Path) -> None:
    """``scripts/__init__.py`` and the ``mssn_monai`` package (its ``.py`` files) under ``scripts/``."""
    _copy_text_tree(REPO / "bundle" / "scripts" / "__init__.py", target / "scripts" / "__init__.py")
    package = REPO / "mssn_monai"
    for path in sorted(package.rglob("*.py")):
        if "__pycache__" not in path.parts:
            dest = target / "scripts" / "mssn_monai" / path.relative_to(package)
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                code = attribute_docstrings_as_comments(_zoo_text(path))
            except (SyntaxError, ValueError) as e:
                raise ValueError(f"{path}: {e}") from e
            dest.write_text(code, encoding="utf-8", newline="\n")


def _export_torchscript(target: Path) -> None:
    """``models/model.ts`` from ``models/model.pt`` with the packaged configs and the packaged code."""
    cmd = [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def"]
    cmd += ["--filepath", "models/model.ts", "--ckpt_file", "models/model.pt"]
    cmd += ["--meta_file", "configs/metadata.json", "--config_file", "configs/inference.json", "--bundle_root", "."]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # no __pycache__ inside the bundle
    r = subprocess.run(cmd, cwd=target, env=env, capture_output=True, text=True)
    if r.returncode != 0 or not (target / "models" / "model.ts").is_file():
        raise RuntimeError(f"ckpt_export failed in {target}:\n{r.stderr[-3000:]}")


def _large_files_yml(target: Path, weights_url: str) -> str:
    lines = ["large_files:"]
    for rel in WEIGHTS:
        md5 = hashlib.md5((target / rel).read_bytes()).hexdigest()
        lines += [
            f'  - path: "{rel}"',
            f'    url: "{weights_url.rstrip("/")}/{Path(rel).name}"',
            f'    hash_val: "{md5}"',
            '    hash_type: "md5"',
        ]
    return "\n".join(lines) + "\n"


def _write_zip(folder: Path, name: str, target: Path) -> int:
    sys.path.insert(0, str(REPO))
    from mssn_monai.io import atomic_write

    files = sorted(p for p in folder.rglob("*") if p.is_file())
    with atomic_write(target, "wb") as f, zipfile.ZipFile(f, "w") as zf:
        for path in files:
            info = zipfile.ZipInfo(f"{name}/{path.relative_to(folder).as_posix()}", date_time=ZIP_TIME)
            info.external_attr = 0o644 << 16
            packed = path.suffix.lower() not in (".pt", ".ts", ".jpg", ".jpeg", ".png")
            info.compress_type = zipfile.ZIP_DEFLATED if packed else zipfile.ZIP_STORED
            zf.writestr(info, path.read_bytes())
    return len(files)


def package_bundle(
    out: str = "dist/zoo",
    bundle: str | None = None,
    name: str = BUNDLE_NAME,
    weights_url: str = PLACEHOLDER_URL,
    jpeg_quality: int = 95,
) -> str:
    """Write ``OUT/models/<name>/`` and ``OUT/<name>-<version>.zip``.

    Args:
        out: output folder (created when missing); a previous ``OUT/models/<name>`` is replaced.
        bundle: the bundle folder (default: this checkout's ``bundle``).
        name: the bundle's folder name in the zoo.
        weights_url: the https folder ``models/model.pt`` and ``models/model.ts`` are uploaded to
            (written into ``large_files.yml``).
        jpeg_quality: JPEG quality for sample images over 1 MiB (4:4:4, no chroma subsampling).

    Returns:
        the bundle folder written.

    Raises:
        FileNotFoundError: the bundle lacks ``configs/metadata.json``, ``configs/inference.json`` or
            ``models/model.pt``.
        ValueError: a file breaks a zoo rule (the message names it), or ``required_packages_version``
            names ``mssn-monai``.
    """
    root = Path(bundle) if bundle is not None else REPO / "bundle"
    for needed in ("configs/metadata.json", "configs/inference.json", "models/model.pt"):
        if not (root / needed).is_file():
            raise FileNotFoundError(f"{root / needed}: missing; the bundle cannot run without it")
    if not weights_url.startswith("https://"):
        raise ValueError(f"weights_url must be an https URL, got {weights_url!r}")
    final = Path(out) / "models" / name
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=final.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes 0700; the renamed folder gets ordinary permissions
    try:
        meta = _write_configs(root, staging)
        for rel in TEXT_COPIED:
            if (root / rel).exists():
                _copy_text_tree(root / rel, staging / rel)
        _write_samples(root, staging, jpeg_quality)
        _write_code(staging)
        (staging / "models").mkdir()
        shutil.copyfile(root / "models" / "model.pt", staging / "models" / "model.pt")
        if (root / "models" / "int8_calibration.json").is_file():  # tied to model.pt's bytes, copied unchanged
            shutil.copyfile(root / "models" / "int8_calibration.json", staging / "models" / "int8_calibration.json")
        _export_torchscript(staging)
        (staging / "large_files.yml").write_text(_large_files_yml(staging, weights_url), newline="\n")
        problems = file_problems(staging)
        if problems:
            raise ValueError("the packaged bundle breaks the zoo's rules:\n  " + "\n  ".join(problems))
        if final.exists():
            if not (final / "configs" / "metadata.json").is_file():
                raise FileExistsError(f"{final}: exists and is not a packaged bundle; not replacing it")
            shutil.rmtree(final)
        staging.rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    zip_path = Path(out) / f"{name}-{meta['version']}.zip"
    count = _write_zip(final, name, zip_path)
    print(f"wrote {final} and {zip_path} ({count} files, {zip_path.stat().st_size / 2**20:.1f} MB)")
    if weights_url == PLACEHOLDER_URL:
        print("large_files.yml holds a placeholder url: pass --weights_url once the weights are uploaded")
    print(f"run it: cd {final} && python -m monai.bundle run --config_file configs/inference.json")
    return str(final)


if __name__ == "__main__":
    fire.Fire(package_bundle)
