"""Let PyPI's torchvision import next to a CPU-only torch (run with the MONAI Label venv's python).

Why: MONAI Label 0.8.5 imports ``torchvision.utils`` (``make_grid``/``save_image``, plain Python over
torch) at module level in ``monailabel/transform/post.py``, which every ``BundleInferTask`` and this
repository's app import. The torchvision release paired with torch 2.13.0 (0.28.0) is on PyPI only as a
build linked against CUDA torch: its C++ extension (``_C.so``: nms, roi_align, deform_conv2d, ...) needs
``libtorch_cuda.so`` and does not load next to the CPU torch. torchvision then guards every registration
for those ops with ``extension._has_ops()`` except the fake kernels of ``torchvision::nms`` and
``torchvision::qnms`` (``_meta_registrations.py``), so ``import torchvision`` fails with
``RuntimeError: operator torchvision::nms does not exist`` (pytorch/vision issue 9085).

What: this script adds the same ``_has_ops()`` guard to those two registrations in the installed
``torchvision/_meta_registrations.py`` (idempotent; it refuses a file it does not recognise), then checks
that ``import torchvision.utils`` works. The C++ ops stay unavailable: calling e.g.
``torchvision.ops.nms`` raises torchvision's own "Couldn't load custom C++ ops" error. Neither MONAI
Label's server nor this repository's app calls them. With a torch/torchvision pair whose extension
loads (a CUDA torch with its torchvision), the script changes nothing.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

OPS = ("nms", "qnms")
GUARD = "(torch.library.register_fake({op!r}) if torchvision.extension._has_ops() else (lambda fn: fn))"


def _check_import() -> subprocess.CompletedProcess:
    code = "import torchvision, torchvision.utils; print(torchvision.__version__, torchvision.extension._has_ops())"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def main() -> int:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        print("torchvision is not installed in this environment", file=sys.stderr)
        return 1
    path = os.path.join(list(spec.submodule_search_locations)[0], "_meta_registrations.py")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    before = _check_import()
    if before.returncode == 0:
        state = "guarded before" if "torchvision.extension._has_ops() else (lambda fn: fn)" in text else "unchanged"
        print(f"torchvision imports ({state}); version, C++ ops loaded: {before.stdout.strip()}")
        return 0
    changed = text
    for op in OPS:
        original = f'@torch.library.register_fake("torchvision::{op}")'
        if changed.count(original) != 1:
            print(f"{path}: expected one line '{original}'; import error:\n{before.stderr}", file=sys.stderr)
            return 1
        changed = changed.replace(original, "@" + GUARD.format(op=f"torchvision::{op}"))
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(changed)
    os.replace(tmp, path)
    after = _check_import()
    if after.returncode != 0:
        print(f"torchvision still does not import after guarding {path}:\n{after.stderr}", file=sys.stderr)
        return 1
    print(f"guarded torchvision::nms/qnms fake kernels in {path}; (version, C++ ops loaded): {after.stdout.strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
