"""MONAI Label app serving the MSSN mitosis detector of this repository's MONAI Bundle.

Start (MONAI Label 0.8.5 in its own virtual environment, see ``bundle/docs/README.md``)::

    monailabel start_server --app apps/monailabel --studies <folder of fields> \
        --host 127.0.0.1 --port 8000 --conf models mssn_mitosis --conf zoo_source github --conf sam2 false

Options (``--conf KEY VALUE``): ``models`` (``mssn_mitosis`` or ``all``), ``bundle_path`` (default: the
repository's ``bundle``), ``bundle_copy`` (``true``: serve a copy under ``<app>/model``), ``disc_radius_px``
(polygon radius, default 6), ``preload``, ``versions_dir`` (where training writes model versions, default
``<app>/model/mssn_mitosis_versions``).
"""

from __future__ import annotations

import logging
import os

import lib.configs
import monailabel
import torch
from lib.activelearning import MitosisUncertainty, MitosisUncertaintyScoring
from lib.core import merge_detections, write_asap_xml
from lib.datastore import PointLabelDatastore
from monailabel.config import settings
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.config import TaskConfig
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.random import Random
from monailabel.utils.others.class_utils import get_class_names

logger = logging.getLogger(__name__)


def _clip_region(request: dict, datastore: Datastore) -> None:
    """Clip ``location``/``size`` to a slide's level-0 size (``wsi_v2`` defaults to a 2048x2048 region,
    whose tiles past a smaller slide's edge would fail)."""
    image = request.get("image")
    if not isinstance(image, str):
        return
    path = image if os.path.exists(image) else datastore.get_image_uri(image)
    try:
        import openslide

        with openslide.OpenSlide(path) as slide:
            w, h = slide.dimensions
    except Exception:  # not a slide OpenSlide reads: MONAI Label answers it in one request
        return
    x, y = (int(v) for v in (request.get("location") or (0, 0))[:2])
    sw, sh = (int(v) for v in (request.get("size") or (0, 0))[:2])
    if sw > 0 and sh > 0:
        request["size"] = [max(1, min(sw, w - x)), max(1, min(sh, h - y))]


class MyApp(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        self.model_dir = os.path.join(app_dir, "model")

        configs = {c.split(".")[-2].lower(): c for c in get_class_names(lib.configs, "TaskConfig")}
        configs = dict(sorted(configs.items()))
        models = [m.strip() for m in (conf.get("models") or "all").split(",") if m.strip()]
        invalid = [m for m in models if m != "all" and m not in configs]
        if invalid:
            raise ValueError(f"unknown model(s) {invalid}; available: all, {', '.join(configs)}")

        self.models: dict[str, TaskConfig] = {}
        for k, v in configs.items():
            if "all" in models or k in models:
                logger.info(f"+++ Adding Model: {k} => {v}")
                self.models[k] = eval(f"{v}()")
                self.models[k].init(k, self.model_dir, conf, None)
        logger.info(f"+++ Using Models: {list(self.models)}")

        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name=f"MONAILabel - MSSN mitosis detection ({monailabel.__version__})",
            description="Two-stage MSSN mitotic figure detection in H&E fields (research only)",
            version=monailabel.__version__,
        )

    def init_datastore(self) -> Datastore:
        """MONAI Label's local datastore, but a final label must read as mitosis / mimic points (else 422)."""
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()
        return PointLabelDatastore(
            self.studies,
            extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def init_infers(self) -> dict[str, InferTask]:
        infers: dict[str, InferTask] = {}
        for n, task_config in self.models.items():
            c = task_config.infer()
            for k, v in (c if isinstance(c, dict) else {n: c}).items():
                logger.info(f"+++ Adding Inferer:: {k} => {v}")
                infers[k] = v
        return infers

    def _serve_newest(self, model: str | None) -> None:
        """Swap in an infer task on the newest trained version of ``model`` (once per new version)."""
        task_config = self.models.get(model or "")
        if task_config is None or not hasattr(task_config, "refresh_infer"):
            return
        task = task_config.refresh_infer(self._infers.get(model))
        if task is not None:
            self._infers[model] = task

    def infer(self, request, datastore=None):
        self._serve_newest(request.get("model"))
        return super().infer(request, datastore)

    def infer_wsi(self, request, datastore=None):
        """MONAI Label's WSI inference, made to work on a CPU-only server and to give one answer.

        No GPU: multi-GPU mode off and ``device`` cpu (MONAI Label would divide by the GPU count). The tiles'
        points are merged into one top-level ``detections`` list (and ``count``), and an ASAP XML answer is
        written by :func:`lib.core.write_asap_xml` (escaped attributes).
        """
        self._serve_newest(request.get("model"))
        request = dict(request)
        if not torch.cuda.is_available():
            request["multi_gpu"] = False
            request["device"] = "cpu"
        _clip_region(request, datastore or self.datastore())
        res = super().infer_wsi(request, datastore)
        params = res.get("params") or {}
        tiles = params.get("annotations")
        if isinstance(tiles, list) and "detections" not in params:  # tiles: one list of every tile's points
            params["detections"] = merge_detections(tiles)
            params["count"] = len(params["detections"])
            if request.get("output", "dsa") == "asap" and res.get("file"):  # rewrite MONAI Label's unescaped XML
                res["file"], _ = write_asap_xml(params, res["file"])
        return res

    def _serving_path(self) -> str:
        task_config = self.models.get("mssn_mitosis")
        return task_config.serving_path() if task_config is not None else ""

    def init_strategies(self) -> dict[str, Strategy]:
        strategies: dict[str, Strategy] = {"random": Random()}
        if "mssn_mitosis" in self.models:
            strategies["mitosis_uncertainty"] = MitosisUncertainty(self._serving_path)
        return strategies

    def init_scoring_methods(self) -> dict[str, ScoringMethod]:
        if "mssn_mitosis" not in self.models:
            return {}
        return {"mitosis_uncertainty": MitosisUncertaintyScoring(self._serving_path)}

    def init_trainers(self) -> dict[str, TrainTask]:
        trainers: dict[str, TrainTask] = {}
        for n, task_config in self.models.items():
            t = task_config.trainer()
            if t:
                logger.info(f"+++ Adding Trainer:: {n} => {t}")
                trainers[n] = t
        return trainers
