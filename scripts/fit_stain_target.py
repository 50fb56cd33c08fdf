"""Fit the stain-normalisation target of a bundle: the mean H&E stain vectors of its training fields.

Prints the ``stain_normalization`` values for ``bundle/configs/train.json``: at detection time every
field is mapped (Macenko) onto the stains the networks were trained on, so a new scanner's or lab's
colours are brought back into the training range.

Usage::

    .venv/bin/python scripts/fit_stain_target.py --datalist data/synth_train/datalist.json [--every 6]
"""

from __future__ import annotations

import json

import fire
import numpy as np
import torch

from mssn_monai.data.datalist import load_datalist
from mssn_monai.io import read_image_rgb
from mssn_monai.transforms import NormalizeHEStain


def main(datalist: str, section: str = "training", every: int = 6) -> None:
    """Average the per-field Macenko estimates (white, stains, 99th-percentile concentrations) of every
    ``every``-th field of the section."""
    fits = []
    for rec in load_datalist(datalist, section)[::every]:
        image = torch.from_numpy(read_image_rgb(rec["image"])).permute(2, 0, 1).float() / 255.0
        fit = NormalizeHEStain().fit(image)
        if fit is not None:
            fits.append(fit)
    if not fits:
        raise ValueError(f"{datalist}: no field of section {section!r} had enough tissue to estimate its stains")
    white = float(np.mean([np.mean(f[0]) for f in fits]))
    stains = np.mean([np.asarray(f[1]) for f in fits], axis=0)
    stains /= np.linalg.norm(stains, axis=1, keepdims=True)
    conc = np.mean([np.asarray(f[2]) for f in fits], axis=0)
    print(f"fitted on {len(fits)} fields")
    print(
        json.dumps(
            {
                "target_stains": np.round(stains, 4).tolist(),
                "target_max_concentrations": np.round(conc, 4).tolist(),
                "target_white": round(min(white, 1.0), 4),
            }
        )
    )


if __name__ == "__main__":
    fire.Fire(main)
