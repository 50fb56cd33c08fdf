"""Check a packaged bundle with the MONAI model zoo's rules that need no network.

Run it with the Python of an environment that holds only what the bundle's ``configs/metadata.json``
asks for (``monai``, ``torch``, ``numpy`` and ``required_packages_version``) plus the zoo CI's own tools
(``jsonschema``, ``pyyaml``), on a bundle folder written by ``scripts/package_bundle.py``::

    python scripts/check_zoo_bundle.py --bundle OUT/models/mssn_mitosis_detection --schema meta_schema.json

It prints one line per check and exits with status 1 naming every problem found. The checks, in order:

- files: the zoo's pre-commit rules, i.e. what ``pretty-format-json --autofix --no-sort-keys
  --indent=4``, ``end-of-file-fixer``, ``mixed-line-ending`` and ``trailing-whitespace`` would change
  (nothing may change), ``check-docstring-first`` (no string at column 0 after a module's docstring or
  code), ``check-added-large-files --maxkb=1024`` (every file at most 1 MiB except the
  ``large_files.yml`` entries), ``large_files.yml`` entries that exist with their md5, and no
  TorchScript (``.ts``) file outside ``large_files.yml`` (pre-commit takes ``.ts`` for TypeScript text);
- the code the configs import is the bundle's own (``scripts/mssn_monai``): ``mssn_monai`` is not
  installed in this environment;
- ``verify_metadata`` against the local schema file (the zoo downloads it; here it is given);
- ``verify_net_in_out`` of ``network_def`` (the zoo's defaults);
- ``ckpt_export`` of ``models/model.pt`` into a temporary file, ``torch.jit.load`` of it and of the
  shipped ``models/model.ts``, whose embedded metadata must be this bundle's (not stale);
- ``create_workflow(...).check_properties()`` for ``inference.json`` (type ``infer``) and ``train.json``
  (type ``train``, on a small datalist made from the samples);
- inference: ``python -m monai.bundle run --config_file configs/inference.json`` from the bundle folder
  on one sample image, in a child process without ``PYTHONPATH``; the CSV, GeoJSON and JSON must agree
  and at least one annotated mitosis must be found within 8 um.

Only the standard library, ``monai``, ``torch``, ``numpy``, ``fire`` and ``pyyaml`` are imported here.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import importlib
import importlib.util
import io
import json
import math
import os
import subprocess
import sys
import tempfile
import tokenize
from collections.abc import Callable, Iterator
from pathlib import Path

MAX_FILE_BYTES = 1024 * 1024
"""``check-added-large-files --maxkb=1024``: a file of more than 1024 KiB is refused."""
BINARY_SUFFIXES = (".pt", ".ts", ".jpg", ".jpeg", ".png", ".tif", ".tiff", ".zip")
"""Files the text rules do not apply to (pre-commit skips binary files, except ``.ts``: see the module doc)."""
JSON_INDENT = 4


def zoo_json_text(obj: object) -> str:
    """``obj`` as ``pretty-format-json --autofix --no-sort-keys --indent=4`` writes it (one final newline)."""
    return json.dumps(obj, indent=JSON_INDENT, ensure_ascii=True) + "\n"


def large_file_entries(bundle: Path) -> list[dict]:
    """The ``large_files`` list of ``bundle/large_files.yml`` (empty when there is none)."""
    path = bundle / "large_files.yml"
    if not path.is_file():
        return []
    try:
        import yaml
    except ImportError:  # the packaging venv may lack pyyaml: read the plain form package_bundle.py writes
        entries = _simple_large_files(path.read_text())
    else:
        entries = (yaml.safe_load(path.read_text()) or {}).get("large_files", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) and "path" in e for e in entries):
        raise ValueError(f"{path}: 'large_files' must be a list of entries with a 'path'")
    return entries


def _simple_large_files(text: str) -> list[dict]:
    """``large_files:`` then ``- key: "value"`` entries with ``key: "value"`` lines (no other YAML)."""
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not lines or lines[0].strip() != "large_files:":
        raise ValueError("expected 'large_files:' on the first line")
    entries: list[dict] = []
    for line in lines[1:]:
        item = line.strip()
        if item.startswith("- "):
            entries.append({})
            item = item[2:]
        key, sep, value = item.partition(":")
        if not sep or not entries:
            raise ValueError(f"cannot read line {line!r} without pyyaml")
        entries[-1][key.strip()] = value.strip().strip('"')
    return entries


def text_problems(path: Path, data: bytes) -> list[str]:
    """What the zoo's text hooks would change in one file (empty when nothing)."""
    problems = []
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return [f"{path}: not UTF-8 text"]
    if "\r" in text:
        problems.append(f"{path}: CR or CRLF line endings (mixed-line-ending wants LF)")
    if text and (not text.endswith("\n") or text.endswith("\n\n")):
        problems.append(f"{path}: must end with exactly one newline (end-of-file-fixer)")
    for number, line in enumerate(text.split("\n"), start=1):
        if line != line.rstrip():
            problems.append(f"{path}:{number}: trailing whitespace (trailing-whitespace)")
            break
    if path.suffix == ".json":
        try:
            expected = zoo_json_text(json.loads(text))
        except ValueError as e:
            problems.append(f"{path}: not valid JSON ({e})")
        else:
            if text != expected:
                problems.append(f"{path}: not formatted as pretty-format-json --no-sort-keys --indent=4 writes it")
    return problems


def docstring_first_problem(path: Path, text: str) -> str | None:
    """``check-docstring-first``: a string token at column 0 after the first one, or after code."""
    first_string = first_code = None
    non_code = (tokenize.COMMENT, tokenize.ENDMARKER, tokenize.NEWLINE, tokenize.NL, tokenize.ENCODING)
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type == tokenize.STRING and token.start[1] == 0:
            if first_string is not None or first_code is not None:
                return f"{path}:{token.start[0]}: a string at column 0 after the module docstring or code"
            first_string = token.start[0]
        elif token.type not in non_code and first_code is None:
            first_code = token.start[0]
    return None


def file_problems(bundle: Path) -> list[str]:
    """Every file of ``bundle`` against the zoo's pre-commit and large-file rules."""
    problems = []
    try:
        entries = large_file_entries(bundle)
    except Exception as e:  # a malformed YAML file: report it, keep checking the rest
        return [f"{bundle / 'large_files.yml'}: cannot be read ({type(e).__name__}: {e})"]
    large = {}
    for entry in entries:
        path = bundle / entry["path"]
        large[path.resolve()] = entry
        if not path.is_file():
            problems.append(f"{path}: listed in large_files.yml but missing")
        elif entry.get("hash_type", "md5") == "md5" and entry.get("hash_val"):
            if hashlib.md5(path.read_bytes()).hexdigest() != entry["hash_val"]:
                problems.append(f"{path}: md5 differs from large_files.yml")
        if not str(entry.get("url", "")).startswith("https://"):
            problems.append(f"{path}: large_files.yml entry without an https url")
    for path in sorted(p for p in bundle.rglob("*") if p.is_file()):
        rel = path.relative_to(bundle)
        if "__pycache__" in rel.parts or path.suffix == ".pyc":
            problems.append(f"{path}: compiled Python file in the bundle")
            continue
        in_large = path.resolve() in large
        if path.stat().st_size > MAX_FILE_BYTES and not in_large:
            problems.append(f"{path}: {path.stat().st_size} bytes > 1024 KiB and not in large_files.yml")
        if path.suffix == ".ts" and not in_large:
            problems.append(f"{path}: TorchScript outside large_files.yml (pre-commit would edit it as text)")
        if path.suffix.lower() not in BINARY_SUFFIXES:
            problems.extend(text_problems(path, path.read_bytes()))
        if path.suffix == ".py":
            problems += [p for p in [docstring_first_problem(path, path.read_text(encoding="utf-8"))] if p]
    return problems


def _bundle_python_env() -> dict[str, str]:
    """This process's environment without ``PYTHONPATH``: a child sees only the venv and the bundle."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


@contextlib.contextmanager
def _bundle_on_path(bundle: Path) -> Iterator[None]:
    """The bundle folder first on ``sys.path``, as the zoo's ``verify_bundle.py`` puts it."""
    sys.path.insert(0, str(bundle))
    try:
        yield
    finally:
        sys.path.remove(str(bundle))


def check_code_is_bundled(bundle: Path) -> str:
    if importlib.util.find_spec("mssn_monai") is not None:
        raise RuntimeError(f"mssn_monai is installed in {sys.prefix}: the bundle's own copy would not be tested")
    with _bundle_on_path(bundle):
        importlib.import_module("scripts")  # puts scripts/ on sys.path, as the configs' first import does
        mssn_monai = importlib.import_module("mssn_monai")
    where = Path(mssn_monai.__file__).resolve()
    if not where.is_relative_to((bundle / "scripts" / "mssn_monai").resolve()):
        raise RuntimeError(f"mssn_monai imported from {where}, not from the bundle")
    return f"mssn_monai {mssn_monai.__version__} from the bundle's scripts/"


def check_metadata(bundle: Path, schema: Path) -> str:
    from monai.bundle import verify_metadata

    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    if meta["version"] not in meta.get("changelog", {}):
        raise ValueError(f"version {meta['version']} has no changelog entry")
    unpublished = [n for n in meta.get("required_packages_version", {}) if n.replace("_", "-") == "mssn-monai"]
    if unpublished:
        raise ValueError("required_packages_version names mssn-monai, which is on no package index")
    verify_metadata(meta_file=str(bundle / "configs" / "metadata.json"), filepath=str(schema))
    return f"metadata {meta['version']} verified against {schema.name}"


def check_net_in_out(bundle: Path) -> str:
    from monai.bundle import verify_net_in_out

    with _bundle_on_path(bundle):
        verify_net_in_out(
            net_id="network_def",
            meta_file=str(bundle / "configs" / "metadata.json"),
            config_file=str(bundle / "configs" / "inference.json"),
            bundle_root=str(bundle),
        )
    return "network_def input/output verified"


def check_torchscript(bundle: Path) -> str:
    import torch
    from monai.bundle import ckpt_export

    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    with tempfile.TemporaryDirectory() as tmp, _bundle_on_path(bundle):
        exported = Path(tmp) / "model.ts"
        ckpt_export(
            net_id="network_def",
            filepath=str(exported),
            ckpt_file=str(bundle / "models" / "model.pt"),
            meta_file=str(bundle / "configs" / "metadata.json"),
            config_file=str(bundle / "configs" / "inference.json"),
            bundle_root=str(bundle),
        )
        torch.jit.load(str(exported), map_location="cpu")
    extra = {"metadata.json": ""}
    shipped = torch.jit.load(str(bundle / "models" / "model.ts"), map_location="cpu", _extra_files=extra)
    shipped_version = json.loads(extra["metadata.json"])["version"]
    if shipped_version != meta["version"]:
        raise ValueError(f"models/model.ts holds metadata {shipped_version}, the bundle is {meta['version']}: stale")
    with torch.no_grad():
        out = shipped(torch.rand(1, 3, 64, 64))
    if tuple(out.shape) != (1, 1, 64, 64):
        raise ValueError(f"models/model.ts maps (1, 3, 64, 64) to {tuple(out.shape)}, expected (1, 1, 64, 64)")
    return f"ckpt_export + torch.jit.load ok; shipped model.ts holds metadata {shipped_version}"


def _training_datalist(bundle: Path, folder: Path) -> Path:
    """A datalist of the samples with ``training`` and ``validation`` sections (absolute image paths)."""
    samples = bundle / "samples"
    records = json.loads((samples / "datalist.json").read_text())["testing"]
    for record in records:
        record["image"] = str((samples / record["image"]).resolve())
    (folder / "datalist.json").write_text(json.dumps({"training": records[:2], "validation": records[2:3]}))
    return folder


def check_workflow_properties(bundle: Path) -> str:
    from monai.bundle import create_workflow

    common = {
        "bundle_root": str(bundle),
        "meta_file": str(bundle / "configs" / "metadata.json"),
        "logging_file": str(bundle / "configs" / "logging.conf"),
    }
    hook = sys.excepthook  # inference.json's initialize installs the one-line error hook: keep ours
    with tempfile.TemporaryDirectory() as tmp, _bundle_on_path(bundle):
        results = {}
        for config, kind, extra in (
            ("inference.json", "infer", {"output_dir": str(Path(tmp) / "eval")}),
            (
                "train.json",
                "train",  # checkpoints and logs into the temporary folder: the check leaves the bundle as it was
                {"dataset_dir": str(_training_datalist(bundle, Path(tmp))), "ckpt_dir": tmp, "output_dir": tmp},
            ),
        ):
            workflow = create_workflow(
                config_file=str(bundle / "configs" / config), workflow_type=kind, **common, **extra
            )
            results[config] = workflow.check_properties()
    sys.excepthook = hook
    missing = {k: v for k, v in results.items() if v}
    if missing or None in results.values():
        raise ValueError(f"check_properties() reports missing or wrong properties: {results}")
    return "check_properties() = [] for inference.json (infer) and train.json (train)"


def _read_points(csv_path: Path) -> list[tuple[float, float, float]]:
    with open(csv_path, newline="") as f:
        rows = [r for r in csv.reader(f) if r]
    if rows and not _is_number(rows[0][0]):
        rows = rows[1:]
    return [(float(x), float(y), float(s)) for x, y, s in rows]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def check_inference(bundle: Path) -> str:
    samples = bundle / "samples"
    datalist = json.loads((samples / "datalist.json").read_text())["testing"]
    record = next(r for r in datalist if r["mitoses"])
    image = samples / record["image"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json"]
        cmd += ["--input_dir", str(image), "--output_dir", str(out)]
        r = subprocess.run(cmd, cwd=bundle, env=_bundle_python_env(), capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"inference.json on {image.name} failed:\n{r.stderr[-3000:]}")
        points = _read_points(out / f"{image.stem}.csv")
        summary = json.loads((out / f"{image.stem}.json").read_text())
        geojson = json.loads((out / f"{image.stem}.geojson").read_text())
    if summary["count"] != len(points) or len(geojson["features"]) != len(points):
        raise ValueError(f"{image.name}: CSV has {len(points)} points, JSON {summary['count']}, GeoJSON features")
    radius_px = 8.0 / float(record.get("spacing") or 0.2456)
    found = sum(any(math.dist((x, y), m) <= radius_px for x, y, _ in points) for m in record["mitoses"])
    if found == 0:
        raise ValueError(f"{image.name}: none of the {len(record['mitoses'])} annotated mitoses detected")
    return f"inference on {image.name}: {len(points)} detections, {found}/{len(record['mitoses'])} mitoses found"


def _digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def check_zoo_bundle(bundle: str, schema: str) -> None:
    """Run every check on ``bundle``; print one line each; exit 1 naming every failure.

    Args:
        bundle: the bundle folder (``OUT/models/<name>`` from ``scripts/package_bundle.py``, or unzipped).
        schema: a local copy of the metadata schema named in ``configs/metadata.json``.
    """
    sys.dont_write_bytecode = True  # no __pycache__ inside the bundle: the checks must leave it as it was
    root, schema_path = Path(bundle).resolve(), Path(schema).resolve()
    if not (root / "configs" / "metadata.json").is_file():
        raise SystemExit(f"{root}: not a bundle folder (no configs/metadata.json)")
    if not schema_path.is_file():
        raise SystemExit(f"{schema_path}: no such schema file")
    failures = []
    before = _digests(root)
    problems = file_problems(root)
    print(f"{'FAIL' if problems else 'ok':<6} files: zoo pre-commit and large-file rules")
    for problem in problems:
        print(f"       {problem}")
    failures += problems
    checks: list[tuple[str, Callable[[], str]]] = [
        ("code", lambda: check_code_is_bundled(root)),
        ("metadata", lambda: check_metadata(root, schema_path)),
        ("verify_net_in_out", lambda: check_net_in_out(root)),
        ("torchscript", lambda: check_torchscript(root)),
        ("properties", lambda: check_workflow_properties(root)),
        ("inference", lambda: check_inference(root)),
    ]
    for name, check in checks:
        try:
            print(f"{'ok':<6} {name}: {check()}", flush=True)
        except Exception as e:
            print(f"{'FAIL':<6} {name}: {type(e).__name__}: {e}", flush=True)
            failures.append(name)
    changed = sorted(set(before.items()) ^ set(_digests(root).items()))
    if changed:
        print(f"FAIL   the checks changed the bundle: {sorted({name for name, _ in changed})}")
        failures.append("unchanged")
    if failures:
        raise SystemExit(f"{len(failures)} problem(s) in {root}")
    print(f"all zoo checks passed: {root}")


if __name__ == "__main__":
    import fire

    fire.Fire(check_zoo_bundle)
