"""Train task ``mssn_mitosis``: ``mssn_monai.adapt.adapt_bundle`` on every labelled image of the datastore.

``POST /train/mssn_mitosis`` (MONAI Label runs it in a background process; ``GET /train/`` gives its
status and log) reads each image's final label with :func:`lib.core.datalist_records` (a bad label file
stops the run with one line naming it), writes a temporary datalist ``{image, mitoses, mimics, spacing}``
and adapts the configured bundle (reference bank, calibration, fine-tuning) to it. The adapted bundle is
written as the next version ``vNNNN`` under the versions folder, next to the earlier ones (kept);
``/infer`` serves the newest complete version from its next request on.

Request params (defaults in ``/info``): ``epochs`` (or MONAI Label's ``max_epochs``; 0 = reference bank
and calibration only), ``device`` (``cpu`` unless given), ``samples_per_epoch``, ``per_class``,
``spacing`` (um/px for images whose datastore info has no ``spacing``), ``seed``, ``align`` (step 0 of
``adapt``, stage 1's BatchNorm statistics moved to the labelled images' look; ``false`` skips it),
``joint_threshold`` (``true``: the operating threshold fitted on the labelled images and the bundle's own
``samples/`` together, each look weighing the same, for a server that keeps serving both looks).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from typing import Any

from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.train import TrainTask

from lib.core import datalist_records, next_version_dir, version_dirs, write_datalist
from mssn_monai.cli_args import as_flag
from mssn_monai.constants import DEFAULT_SPACING_UM

logger = logging.getLogger(__name__)


class MSSNAdaptTrain(TrainTask):
    """Adapt the bundle to the datastore's labelled images; each run a new model version.

    Args:
        bundle_path: the bundle every run starts from (the configured one, not an earlier version, so a
            run sees all labels once and reference banks do not pile up).
        versions_dir: where the versions ``v0001``, ``v0002``, ... go.
    """

    def __init__(self, bundle_path: str, versions_dir: str) -> None:
        super().__init__("MSSN adapt: reference bank, calibration and fine-tuning on the labelled images")
        self.bundle_path = bundle_path
        self.versions_dir = versions_dir

    def config(self) -> dict[str, Any]:
        return {
            "epochs": 1,
            "device": "cpu",
            "samples_per_epoch": 256,
            "per_class": 8,
            "spacing": DEFAULT_SPACING_UM,
            "seed": 0,
            "align": True,
            "joint_threshold": False,
        }

    def stats(self) -> dict[str, Any]:
        versions = version_dirs(self.versions_dir)
        if not versions:
            return {}
        report = versions[-1] / "adapt_report.json"
        stats = json.loads(report.read_text()) if report.is_file() else {}
        return {"version": versions[-1].name, "versions": [v.name for v in versions], **stats}

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        params = {**self.config(), **request}
        epochs = int(request.get("epochs", request.get("max_epochs", params["epochs"])))
        items = []
        for image_id in sorted(datastore.get_labeled_images(DefaultLabelTag.FINAL.value)):
            spacing = datastore.get_image_info(image_id).get("spacing") or params["spacing"]
            items.append(
                (
                    datastore.get_image_uri(image_id),
                    datastore.get_label_uri(image_id, DefaultLabelTag.FINAL.value),
                    spacing,
                )
            )
        if not items:
            raise ValueError("no labelled image in the datastore: submit final labels first (PUT /datastore/label)")
        try:
            records = datalist_records(items)
        except ValueError as e:
            logger.error(str(e))
            raise
        out = next_version_dir(self.versions_dir)
        logger.info(f"adapting {self.bundle_path} on {len(records)} labelled images ({epochs} epochs) -> {out}")
        from mssn_monai.adapt import adapt_bundle

        with tempfile.TemporaryDirectory(prefix="mssn_train_") as tmp:
            datalist = write_datalist(records, os.path.join(tmp, "datalist.json"))
            report = adapt_bundle(
                datalist,
                out,
                bundle=self.bundle_path,
                epochs=epochs,
                samples_per_epoch=int(params["samples_per_epoch"]),
                per_class=int(params["per_class"]),
                device=str(params["device"]),
                seed=int(params["seed"]),
                align=as_flag(params["align"], "align"),
                joint_threshold=as_flag(params["joint_threshold"], "joint_threshold"),
            )
        report = {**report, "datalist": [r["image"] for r in records], "version": out.name}
        (out / "adapt_report.json").write_text(json.dumps(report, indent=1))
        logger.info(f"new model version {out}: {report}")
        return report
