"""MONAI Deploy App SDK application: MSSN mitosis detection on a folder of H&E fields.

Run (MONAI Deploy App SDK 4.0 in its own virtual environment, see ``bundle/docs/README.md``)::

    python app.py -i <image file or folder> -o <output folder> -m <model.ts | bundle folder>

or with ``HOLOSCAN_INPUT_PATH``, ``HOLOSCAN_OUTPUT_PATH`` and ``HOLOSCAN_MODEL_PATH`` set. ``model.ts`` is the
bundle's TorchScript (``python -m monai.bundle ckpt_export network_def ...``), which carries
``extra/metadata.json`` and ``extra/inference.json``; a bundle folder (``configs/`` + ``models/model.ts`` or
``models/model.pt``) works too.

Graph, one tick per image::

    FieldLoaderOperator --image--> MSSNBundleInferenceOperator --pred, points--> DetectionWriterOperator
                        --path-------------------------------------------------->

* :class:`FieldLoaderOperator` reads each PNG/TIFF/JPEG field (as the bundle's ``LoadRGBd``:
  ``(3, H, W)`` float32 in ``[0, 1]``).
* :class:`MSSNBundleInferenceOperator` is the SDK's ``MonaiBundleInferenceOperator`` configured from the
  bundle's ``inference.json``: its ``preprocessing`` (stain normalisation; the file loader dropped),
  ``inferer``, the network, and its ``postprocessing`` (``DetectionMapToPointsd``; ``SaveDetectionsd``
  dropped), plus ``PointsToDisksd`` so that the ``pred`` image is the disc mask. Three small changes make
  the stock operator fit this bundle: the file loader ``LoadRGBd`` and the file writer ``SaveDetectionsd``
  are removed (the operator drops only ``LoadImage*``/``SaveImage*``), the batch axis is removed before
  post-processing (``DetectionMapToPointsd`` wants one ``(1, H, W)`` map), and the points are sent as a
  second output (the stock operator sends only ``network_data_format`` outputs, and casts the float
  detection map to uint8, which would turn every probability into 0).
* :class:`DetectionWriterOperator` writes per image what ``python -m mssn_monai detect`` writes:
  ``<stem>.csv`` (``x,y,score``), ``<stem>.geojson`` (QuPath), ``<stem>.json`` (summary), and
  ``<stem>_discs.png``: a disc of radius ``DISC_RADIUS_PX`` (value 255) around each mitosis.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from monai.deploy.conditions import CountCondition
from monai.deploy.core import AppContext, Application, Fragment, Image, IOType, Operator, OperatorSpec
from monai.deploy.operators.monai_bundle_inference_operator import (
    BundleConfigNames,
    IOMapping,
    MonaiBundleInferenceOperator,
    get_bundle_config,
)

DISC_RADIUS_PX = float(os.environ.get("MSSN_DISC_RADIUS_PX", "6"))
"""Radius of the discs in ``<stem>_discs.png``, in pixels."""

DROPPED_TRANSFORMS = ("LoadRGBd", "SaveDetectionsd")
"""Bundle transforms that read or write files themselves; the app's loader and writer operators do that."""

logger = logging.getLogger("mssn_deploy")


def _without(compose: Any, names: tuple[str, ...]) -> Any:
    compose.transforms = tuple(t for t in compose.transforms if type(t).__name__ not in names)
    return compose


class FieldLoaderOperator(Operator):
    """Emits the image files under ``input_path`` one per tick (run it with ``CountCondition(len(files))``).

    Outputs:
        image: :class:`Image` of ``(3, H, W)`` float32 RGB in ``[0, 1]``, metadata ``path``, ``stem``, size.
        path: the image file (``str``).
    """

    def __init__(self, fragment: Fragment, *args, files: list[Path], **kwargs) -> None:
        self.files = list(files)
        self.index = 0
        super().__init__(fragment, *args, **kwargs)

    @staticmethod
    def list_fields(input_path: str | os.PathLike) -> list[Path]:
        """The image files under ``input_path``; inputs whose outputs would share a name are refused first."""
        from mssn_monai.io import list_images, output_stems

        files = list_images(input_path)
        output_stems(files, ".")  # the CLI's and the bundle's naming rule: refuse collisions before any work
        return files

    def setup(self, spec: OperatorSpec) -> None:
        spec.output("image")
        spec.output("path")

    def compute(self, op_input, op_output, context) -> None:
        from mssn_monai.transforms import LoadRGB

        path = self.files[self.index]
        self.index += 1
        field = LoadRGB()(str(path)).numpy()  # the bundle's LoadRGBd, without the dictionary
        logger.info(f"field {self.index}/{len(self.files)}: {path} {tuple(field.shape)}")
        meta = {"path": str(path), "stem": path.stem, "height": field.shape[1], "width": field.shape[2]}
        op_output.emit(Image(field, metadata=meta), "image")
        op_output.emit(str(path), "path")


class MSSNBundleInferenceOperator(MonaiBundleInferenceOperator):
    """``MonaiBundleInferenceOperator`` for the MSSN bundle: detection map -> disc mask ``pred`` + ``points``."""

    def __init__(self, *args, disc_radius_px: float = DISC_RADIUS_PX, **kwargs) -> None:
        self.disc_radius_px = float(disc_radius_px)
        super().__init__(*args, **kwargs)

    def _init_config(self, config_names) -> None:
        from mssn_monai.transforms import PointsToDisksd

        super()._init_config(config_names)
        self._preproc = _without(self._preproc, DROPPED_TRANSFORMS)
        post = _without(self._postproc, DROPPED_TRANSFORMS)
        post.transforms = (*post.transforms, PointsToDisksd(keys="pred", radius_px=self.disc_radius_px))
        self._postproc = post
        # the points (x, y, probability) of DetectionMapToPointsd leave as a second output
        self._outputs = {**self._outputs, "points": {"type": "tuples"}}
        logger.info(
            f"bundle {self.bundle_path}: pre {[type(t).__name__ for t in self._preproc.transforms]}, "
            f"post {[type(t).__name__ for t in self._postproc.transforms]}, device {self._device}"
        )

    def post_process(self, data: Any, *args, **kwargs) -> Any:
        # the inferer's (1, 1, H, W) batch -> the (1, H, W) map of the one image
        return super().post_process(data[0], *args, **kwargs)


class DetectionWriterOperator(Operator):
    """Writes ``<stem>.csv``, ``.geojson``, ``.json`` (as ``mssn_monai detect``) and ``<stem>_discs.png``.

    Inputs:
        pred: :class:`Image`, the ``(H, W)`` uint8 disc mask (1 inside a disc).
        points: ``(N, 3)`` ``x, y, probability``.
        path: the image file (for the stem).
    """

    def __init__(self, fragment: Fragment, *args, output_folder: Path, settings: dict, spacing_um: float, **kwargs):
        self.output_folder = Path(output_folder)
        self.settings = dict(settings)
        self.spacing_um = float(spacing_um)
        self.written: list[tuple[str, int]] = []
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("pred")
        spec.input("points")
        spec.input("path")

    def compute(self, op_input, op_output, context) -> None:
        from mssn_monai.io import write_image
        from mssn_monai.outputs import write_detection_outputs

        pred = op_input.receive("pred")
        points = np.asarray(op_input.receive("points"), dtype=np.float64).reshape(-1, 3)
        path = Path(op_input.receive("path"))
        mask = np.asarray(pred.asnumpy() if isinstance(pred, Image) else pred)
        self.output_folder.mkdir(parents=True, exist_ok=True)
        stem = self.output_folder / path.stem
        summary = write_detection_outputs(
            stem, None, {"detections": points}, self.spacing_um, self.settings, size=mask.shape[-2:]
        )
        disc = np.where(mask > 0, 255, 0).astype(np.uint8)
        write_image(stem.parent / f"{path.stem}_discs.png", disc)  # 8-bit grayscale
        self.written.append((path.stem, summary["count"]))
        logger.info(f"{path.stem}: {summary['count']} mitoses -> {stem}.csv/.geojson/.json, {path.stem}_discs.png")


def _settings(model_path: Path) -> tuple[dict, float]:
    """The detector settings each JSON summary records (the keys ``mssn_monai detect`` writes) and the spacing.

    Read from the TorchScript module's attributes (``model.ts``, or ``models/model.ts`` of a bundle folder),
    else from the bundle's ``inference.json`` and the ``fpr.operating_threshold`` of ``models/model.pt``.
    """
    import torch

    from mssn_monai.cli_args import as_flag

    parser = get_bundle_config(str(model_path), "inference")
    keys = ("spacing_um", "candidate_threshold", "min_distance_um", "vote_radius_px")
    ts = model_path if model_path.is_file() else model_path / "models" / "model.ts"
    if ts.is_file():
        module = torch.jit.load(str(ts), map_location="cpu")
        settings = {k: float(getattr(module, k)) for k in keys}
        settings["operating_threshold"] = float(module.fpr.operating_threshold)
    else:
        state = torch.load(str(model_path / "models" / "model.pt"), map_location="cpu")
        settings = {k: float(parser.get_parsed_content(k)) for k in keys}
        settings["operating_threshold"] = float(state["fpr.operating_threshold"])
    settings["stain_normalization"] = as_flag(parser.get("normalize_stain", True), "normalize_stain")
    return settings, settings["spacing_um"]


class MSSNMitosisApp(Application):
    """MSSN two-stage mitosis detection: image files in, detections (CSV/GeoJSON/JSON) and disc masks out."""

    def compose(self) -> None:
        app_context: AppContext = Application.init_app_context(self.argv)
        input_path, output_path = Path(app_context.input_path), Path(app_context.output_path)
        model_path = Path(app_context.model_path)
        files = FieldLoaderOperator.list_fields(input_path)
        if not files:
            raise FileNotFoundError(f"{input_path}: no image files (.tif, .tiff, .png, .jpg, .jpeg, .bmp)")
        bundle_path = None
        if model_path.is_dir():
            if not (model_path / "configs" / "inference.json").exists():
                raise FileNotFoundError(f"{model_path}: a bundle folder needs configs/inference.json")
            bundle_path, app_context.models = model_path, None  # the operator loads models/model.ts or model.pt
        settings, spacing = _settings(model_path)
        logger.info(f"{len(files)} field(s) from {input_path}, model {model_path}, output {output_path}")

        loader = FieldLoaderOperator(self, CountCondition(self, count=len(files)), files=files, name="field_loader")
        infer = MSSNBundleInferenceOperator(
            self,
            input_mapping=[IOMapping("image", Image, IOType.IN_MEMORY)],
            output_mapping=[
                IOMapping("pred", Image, IOType.IN_MEMORY),
                IOMapping("points", np.ndarray, IOType.IN_MEMORY),
            ],
            app_context=app_context,
            bundle_path=bundle_path,
            bundle_config_names=BundleConfigNames(config_names=["inference"]),
            name="mssn_bundle_inference",
        )
        writer = DetectionWriterOperator(
            self, output_folder=output_path, settings=settings, spacing_um=spacing, name="detection_writer"
        )
        self.add_flow(loader, infer, {("image", "image")})
        self.add_flow(infer, writer, {("pred", "pred"), ("points", "points")})
        self.add_flow(loader, writer, {("path", "path")})


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    MSSNMitosisApp().run()
