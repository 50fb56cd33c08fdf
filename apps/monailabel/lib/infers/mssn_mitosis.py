"""Infer task: the bundle's MSSN detector behind MONAI Label's REST API.

A :class:`monailabel.tasks.infer.bundle.BundleInferTask` on the bundle folder: it builds ``network_def``
from ``configs/inference.json``, loads ``models/model.pt`` and runs the bundle's ``preprocessing``
(``LoadRGBd`` swapped for :class:`lib.transforms.LoadFieldd`, which also reads regions and arrays),
``inferer`` and ``postprocessing`` (``DetectionMapToPointsd``; ``SaveDetectionsd`` dropped). The
detection map then becomes

* ``detections``: ``[[x, y, score], ...]`` in slide pixels (the points ``mssn_monai detect`` writes), and
* one small disc polygon (radius ``disc_radius_px``) per mitosis, via ``PointsToDisksd`` ->
  ``FindContoursd`` -> ``PolygonWriter``: the DSA JSON / ASAP XML that QuPath and the Digital Slide
  Archive read (``output=dsa|asap``).

The type is given explicitly (``segmentation``, as the pathology sample app's polygon models): with
type ``detection`` MONAI Label calls ``run_detector`` (needs a ``detector`` entry the bundle does not
have) and the ``DetectionWriter`` (3-D ``box``/``label`` for 3D Slicer), neither of which fits points.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from monai.transforms import SaveImaged, SqueezeDimd
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.bundle import BundleInferTask
from monailabel.transform.post import FindContoursd
from monailabel.transform.writer import PolygonWriter

from lib.core import write_asap_xml
from lib.transforms import DetectionsToResultd, LoadFieldd, ToRegiond, ToXYd
from mssn_monai.transforms import LoadRGBd, NormalizeHEStaind, PointsToDisksd, SaveDetectionsd

logger = logging.getLogger(__name__)

LABEL = "mitosis"


class MSSNMitosis(BundleInferTask):
    """MSSN two-stage mitosis detection: points with scores, and disc polygons for whole-slide viewers.

    Args:
        path: the bundle folder (``configs/inference.json``, ``configs/metadata.json``, ``models/model.pt``).
        conf: the app's ``--conf`` options (``preload``).
        disc_radius_px: radius of each mitosis's polygon, in pixels (overridable per request).
        min_poly_area: smallest polygon area kept by ``FindContoursd`` (overridable per request).
    """

    def __init__(
        self, path: str, conf: dict[str, str], disc_radius_px: float = 6.0, min_poly_area: float = 10.0, **kwargs
    ) -> None:
        super().__init__(
            path,
            conf,
            type=InferType.SEGMENTATION,
            pre_filter=[LoadRGBd],
            post_filter=[SaveDetectionsd, SaveImaged],
            add_post_restore=False,
            load_strict=True,
            **kwargs,
        )
        if not self.valid:
            return
        self.labels = {LABEL: 1}
        self.label_colors = {LABEL: (0, 200, 0)}
        self.disc_radius_px = float(disc_radius_px)
        self.min_poly_area = float(min_poly_area)
        self._config.update(
            {
                "label_colors": self.label_colors,
                # models/ may also hold training checkpoints (fnr_train_*.pt, ...): only model.pt is the detector
                "model_filename": ["model.pt"],
                "disc_radius_px": self.disc_radius_px,
            }
        )

    def info(self) -> dict[str, Any]:
        d = super().info()
        d["pathology"] = True
        return d

    def pre_transforms(self, data=None) -> Sequence[Callable]:
        """``LoadFieldd`` (regions read with context) normalises with the whole field's stain statistics,
        in place of the bundle's ``NormalizeHEStaind``, which would fit each tile on its own."""
        rest = list(super().pre_transforms(data))
        norm = [t for t in rest if isinstance(t, NormalizeHEStaind)]
        rest = [t for t in rest if not isinstance(t, NormalizeHEStaind)]
        return [LoadFieldd(keys=self.key_image, normalizer=norm[0].normalizer if norm else None), *rest]

    def post_transforms(self, data=None) -> Sequence[Callable]:
        radius = float((data or {}).get("disc_radius_px", self.disc_radius_px))
        return [
            *super().post_transforms(data),  # DetectionMapToPointsd: pred -> points (x, y, score)
            ToRegiond(keys=self.key_pred, points_key="points"),  # drop the context read around a region
            DetectionsToResultd(keys="points", result=self.output_json_key),
            PointsToDisksd(keys=self.key_pred, radius_px=radius),  # (1, H, W) uint8 discs
            SqueezeDimd(keys=self.key_pred, dim=0),  # (H, W)
            ToXYd(keys=self.key_pred),  # (W, H): FindContoursd's axis order
            FindContoursd(
                keys=self.key_pred,
                labels=self.labels,
                min_positive=1,
                min_poly_area=self.min_poly_area,
                result=self.output_json_key,
            ),
        ]

    def writer(self, data, extension=None, dtype=None):
        """DSA JSON or ASAP XML of the polygons (``output``), and the points in the result JSON."""
        result_file, result_json = PolygonWriter(label=self.output_label_key, json=self.output_json_key)(data)
        if data.get("output") == "asap" and result_file:  # MONAI Label's XML leaves "&" etc. unescaped
            result_file, _ = write_asap_xml(result_json, result_file)
        result = data.get(self.output_json_key) or {}
        if result_json is not result:  # a whole request (not a WSI tile): also give the points at the top level
            result_json["detections"] = result.get("detections", [])
            result_json["count"] = result.get("count", 0)
        return result_file, result_json
