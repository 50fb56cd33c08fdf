"""Active learning by detection uncertainty: strategy and scoring task ``mitosis_uncertainty``.

An image's uncertainty is :func:`lib.core.field_uncertainty`: the detector (the newest trained version,
else the configured bundle) on the whole field, its voted candidates' calibrated probabilities scored
against the operating threshold by :func:`mssn_monai.metrics.detection_uncertainty`, per mm².

* Scoring (``POST /scoring/mitosis_uncertainty``; MONAI Label also runs it after training): every
  unlabelled image's uncertainty is stored in the datastore, in its image info under
  ``mssn_uncertainty`` (``{"value", "model", "candidates", "ts"}``).
* Strategy (``POST /activelearning/mitosis_uncertainty``): the unlabelled image with the highest
  uncertainty, from the stored scores of the model now served; images without one are scored first.
  ``random`` stays for comparison.

Images larger than ``max_pixels`` (default 64 Mpx; a whole slide) are skipped: they would be read whole.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy

from lib.core import UNCERTAINTY_KEY, field_uncertainty, most_uncertain
from mssn_monai.constants import DEFAULT_SPACING_UM

logger = logging.getLogger(__name__)

MAX_PIXELS = 64 * 1024 * 1024


class _Scorer:
    """Scores images with the detector of the bundle ``bundle_path()`` names (loaded once per bundle)."""

    def __init__(self, bundle_path: Callable[[], str], max_pixels: int = MAX_PIXELS) -> None:
        self.bundle_path = bundle_path
        self.max_pixels = int(max_pixels)
        self._loaded: tuple[str, Any] | None = None

    def _fields(self, path: str, device: str) -> Any:
        if self._loaded is None or self._loaded[0] != path:
            from mssn_monai.checkpoints import load_detector

            self._loaded = (path, load_detector(path, device))
        return self._loaded[1]

    def score(self, datastore: Datastore, image_id: str, request: dict[str, Any]) -> dict[str, Any] | None:
        from mssn_monai.io import read_image_rgb

        path = self.bundle_path()
        model = os.path.basename(os.path.normpath(path))
        info = datastore.get_image_info(image_id) or {}
        stored = info.get(UNCERTAINTY_KEY) or {}
        if stored.get("model") == model and not request.get("force"):
            return stored
        uri = datastore.get_image_uri(image_id)
        image = read_image_rgb(uri)
        if image.shape[0] * image.shape[1] > self.max_pixels:
            logger.warning(f"mitosis_uncertainty: {image_id} has {image.shape[0] * image.shape[1]} pixels, skipped")
            return None
        spacing = float(info.get("spacing") or request.get("spacing") or DEFAULT_SPACING_UM)
        res = field_uncertainty(self._fields(path, str(request.get("device") or "cpu")), image, spacing)
        res = {**res, "model": model, "ts": int(time.time())}
        datastore.update_image_info(image_id, {UNCERTAINTY_KEY: res})
        logger.info(f"mitosis_uncertainty: {image_id} = {res['value']:.3f} per mm2 ({res['candidates']} candidates)")
        return res


class MitosisUncertaintyScoring(ScoringMethod):
    """Store each unlabelled image's detection uncertainty in the datastore (``mssn_uncertainty``)."""

    def __init__(self, bundle_path: Callable[[], str], max_pixels: int = MAX_PIXELS) -> None:
        super().__init__("Detection uncertainty per mm2 of each unlabelled image (stored as mssn_uncertainty)")
        self.scorer = _Scorer(bundle_path, max_pixels)

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        images = datastore.get_unlabeled_images(DefaultLabelTag.FINAL.value)
        scores = {}
        for image_id in sorted(images):
            res = self.scorer.score(datastore, image_id, request)
            if res is not None:
                scores[image_id] = res["value"]
        return {"method": "mitosis_uncertainty", "scores": scores}


class MitosisUncertainty(Strategy):
    """The unlabelled image whose detections are least certain (per mm²): label it next."""

    def __init__(self, bundle_path: Callable[[], str], max_pixels: int = MAX_PIXELS) -> None:
        super().__init__("Unlabelled image with the highest detection uncertainty per mm2")
        self.scorer = _Scorer(bundle_path, max_pixels)

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any] | None:
        images = datastore.get_unlabeled_images(DefaultLabelTag.FINAL.value)
        scores = {}
        for image_id in images:
            res = self.scorer.score(datastore, image_id, request)
            if res is not None:
                scores[image_id] = res["value"]
        chosen = most_uncertain(scores)
        if chosen is None:
            return None
        logger.info(f"mitosis_uncertainty: next {chosen} ({scores[chosen]:.3f} per mm2) of {len(scores)} scored")
        return {"id": chosen, "uncertainty": scores[chosen]}
