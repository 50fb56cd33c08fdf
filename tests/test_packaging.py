"""What the package and the bundle declare they need is what the code imports."""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# import name -> distribution name, where they differ
DISTRIBUTION = {"PIL": "pillow", "skimage": "scikit-image", "ignite": "pytorch-ignite", "openslide": "openslide-python"}
# import name -> the optional extra that installs it (imported only when a file needs it, never by the bundle's configs)
OPTIONAL = {"openslide": "openslide"}


def _third_party_imports() -> set[str]:
    """Top-level modules ``mssn_monai`` imports (inside functions too) that are not its own or the stdlib's."""
    names = set()
    for path in (ROOT / "mssn_monai").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
    return {n for n in names if n != "mssn_monai" and n not in sys.stdlib_module_names and n != "__future__"}


def _distributions(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].strip().lower().replace("_", "-") for r in requirements}


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_runtime_dependencies_are_the_imports():
    project = _pyproject()["project"]
    imports = _third_party_imports()
    imported = {DISTRIBUTION.get(n, n).lower() for n in imports - set(OPTIONAL)}
    assert _distributions(project["dependencies"]) == imported
    assert "pytest" not in _distributions(project["dependencies"])
    assert "pytest" in _distributions(project["optional-dependencies"]["dev"])  # test tools are an extra
    for name, extra in OPTIONAL.items():  # an optional import is still imported, and its extra installs it
        assert name in imports, name
        assert DISTRIBUTION.get(name, name) in _distributions(project["optional-dependencies"][extra]), extra


def test_bundle_requirements_are_published_and_cover_the_imports():
    """The zoo installs monai, torch, numpy and required_packages_version: that must be enough to import."""
    meta = json.loads((ROOT / "bundle" / "configs" / "metadata.json").read_text())
    required = {n.lower() for n in meta["required_packages_version"]} | {"monai", "torch", "numpy"}
    imported = {DISTRIBUTION.get(n, n).lower() for n in _third_party_imports() - set(OPTIONAL)}
    assert imported <= required, imported - required
    assert "mssn-monai" not in required
    versions = [meta["numpy_version"], *meta["required_packages_version"].values()]
    assert all(re.fullmatch(r"\d+(\.\d+)+", v) for v in versions), versions  # the zoo writes name==version


def test_bundle_configs_import_the_bundled_code_first():
    """``$import scripts`` first: in a packaged bundle it puts the copy of mssn_monai on sys.path."""
    for name in ("inference.json", "train.json"):
        imports = json.loads((ROOT / "bundle" / "configs" / name).read_text())["imports"]
        assert imports[0] == "$import scripts", name
    assert (ROOT / "bundle" / "scripts" / "__init__.py").is_file()


def test_default_bundle_is_the_checkout_bundle():
    """In a source checkout the commands use its ``bundle/``, wherever they are run from."""
    import mssn_monai
    from mssn_monai.checkpoints import DEFAULT_BUNDLE

    assert DEFAULT_BUNDLE == Path(mssn_monai.__file__).resolve().parents[1] / "bundle"


def test_wheel_manifest_covers_what_setup_builds_in():
    """MANIFEST.in (sdist) and setup.py (wheel) name the same bundle files, and they exist."""
    manifest = " ".join(
        line.removeprefix("include ") for line in (ROOT / "MANIFEST.in").read_text().splitlines() if line[:1] != "#"
    ).split()
    tree = ast.parse((ROOT / "setup.py").read_text())
    built = next(
        ast.literal_eval(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "BUNDLE_FILES"
    )
    assert sorted(manifest) == sorted(f"bundle/{p}" for p in built)
    for pattern in built:
        assert list((ROOT / "bundle").glob(pattern)), pattern
