"""Task config ``mssn_mitosis``: the repository's MONAI Bundle, served as it lies or as a copy.

``--conf bundle_path <dir>`` names the bundle (default: this repository's ``bundle`` folder, two levels
above the app). The infer task reads it in place. ``--conf bundle_copy true`` first copies its
``configs/``, ``models/model.pt`` and licence into ``<app>/model/mssn_mitosis`` (done once; delete that
folder to refresh) and serves the copy.

Training (``/train/mssn_mitosis``, :mod:`lib.trainers`) writes each adapted bundle as a new version
``vNNNN`` under ``--conf versions_dir <dir>`` (default ``<app>/model/mssn_mitosis_versions``); the infer
task serves the newest complete version (the configured bundle while there is none).
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any

from monailabel.interfaces.config import TaskConfig
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.utils.others.generic import strtobool

import lib.infers
import lib.trainers
from lib.core import newest_bundle

logger = logging.getLogger(__name__)

APP_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_BUNDLE = os.path.realpath(os.path.join(APP_DIR, "..", "..", "bundle"))


def copy_bundle(source: str, target: str) -> str:
    """Copy what inference needs (``configs/``, ``models/model.pt``, ``LICENSE``) from ``source`` to ``target``."""
    if os.path.exists(os.path.join(target, "models", "model.pt")):
        return target
    tmp = f"{target}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(os.path.join(source, "configs"), os.path.join(tmp, "configs"))
    os.makedirs(os.path.join(tmp, "models"))
    shutil.copy2(os.path.join(source, "models", "model.pt"), os.path.join(tmp, "models", "model.pt"))
    if os.path.exists(os.path.join(source, "LICENSE")):
        shutil.copy2(os.path.join(source, "LICENSE"), os.path.join(tmp, "LICENSE"))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target


class MSSNMitosis(TaskConfig):
    def init(self, name: str, model_dir: str, conf: dict[str, str], planner: Any, **kwargs):
        super().init(name, model_dir, conf, planner, **kwargs)
        source = os.path.realpath(conf.get("bundle_path", DEFAULT_BUNDLE))
        for needed in ("configs/inference.json", "configs/metadata.json", "models/model.pt"):
            if not os.path.exists(os.path.join(source, needed)):
                raise FileNotFoundError(f"bundle {source}: missing {needed} (set --conf bundle_path <bundle dir>)")
        if strtobool(conf.get("bundle_copy", "false")):
            self.bundle_path = copy_bundle(source, os.path.join(model_dir, name))
        else:
            self.bundle_path = source
        self.versions_dir = os.path.realpath(conf.get("versions_dir") or os.path.join(model_dir, f"{name}_versions"))
        self.path = os.path.join(self.bundle_path, "models", "model.pt")
        logger.info(f"+++ {name}: bundle {self.bundle_path}; trained versions under {self.versions_dir}")

    def serving_path(self) -> str:
        """The bundle ``/infer`` serves: the newest trained version, else the configured bundle."""
        return str(newest_bundle(self.versions_dir, self.bundle_path))

    def refresh_infer(self, current: InferTask | None) -> InferTask | None:
        """A new infer task when a newer version than ``current``'s bundle exists, else ``None``."""
        path = self.serving_path()
        if current is not None and os.path.realpath(getattr(current, "bundle_path", "")) == os.path.realpath(path):
            return None
        logger.info(f"+++ {self.name}: serving {path}")
        return self._infer_task(path)

    def infer(self) -> InferTask | dict[str, InferTask]:
        return self._infer_task(self.serving_path())

    def _infer_task(self, path: str) -> InferTask:
        return lib.infers.MSSNMitosis(
            path,
            self.conf,
            disc_radius_px=float(self.conf.get("disc_radius_px", 6.0)),
        )

    def trainer(self) -> TrainTask | None:
        return lib.trainers.MSSNAdaptTrain(self.bundle_path, self.versions_dir)
