"""Refit a bundle's vote calibration and operating threshold on labelled validation fields, in place.

What ``train.json`` does at the end of stage 2 (:class:`mssn_monai.handlers.FitOperatingPoint`: Platt
scaling of the vote, then the F1-best operating threshold; every ``domain`` weighing the same when the
records name two or more), without training: the weights and the reference bank stay as they are.
Use it to choose the operating point on your own validation fields, or after changing how it is
chosen. ``models/model.pt`` is rewritten atomically; a ``models/model.ts`` beside it is removed, since
it would be stale (``python -m monai.bundle ckpt_export`` makes it again).

Usage::

    python scripts/refit_operating_point.py --bundle bundle --datalist val/datalist.json [--section validation]
"""

from __future__ import annotations

import json

import fire


def main(bundle: str = "bundle", datalist: str = "", section: str = "validation", device: str = "cpu") -> None:
    """Refit and save; prints the metrics on the fields (``fields_f1``, ``fields_operating_threshold``, ...) as JSON."""
    from mssn_monai.data.datalist import load_datalist
    from mssn_monai.handlers import refit_operating_point

    records = load_datalist(datalist, section)
    if not records:
        raise SystemExit(f"error: {datalist} has no {section!r} fields")
    print(json.dumps(refit_operating_point(bundle, records, device), indent=2))


if __name__ == "__main__":
    fire.Fire(main)
