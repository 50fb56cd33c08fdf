"""Build a network from the bundle's config and load its weights, with errors that say what is wrong."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mssn_monai.cli_args import as_flag
from mssn_monai.constants import INT8_CALIBRATION_FILE, MODEL_FILE

__all__ = [
    "DEFAULT_BUNDLE",
    "bundle_config",
    "load_state_dict",
    "load_network",
    "save_state_dict",
    "latest_checkpoint",
    "stain_normalizer",
    "load_detector",
    "file_sha256",
    "load_int8_calibration",
]


def _default_bundle() -> Path:
    here = Path(__file__).resolve().parent
    candidates = [here.parent / "bundle", here / "bundle"]  # a source checkout's, then the installed copy
    if here.parent.name == "scripts":  # the copy inside a packaged bundle (<bundle>/scripts/mssn_monai)
        candidates.append(here.parents[1])
    for candidate in candidates:
        if (candidate / "configs" / "inference.json").is_file() and (candidate / "models" / MODEL_FILE).is_file():
            return candidate
    return candidates[0]


DEFAULT_BUNDLE = _default_bundle()
"""The bundle commands use when given none: a source checkout's ``<repo>/bundle``; else the bundle
installed with the package (``mssn_monai/bundle`` in a wheel: configs, ``models/model.pt``, docs; no
samples); else, for the copy of this package inside a packaged bundle (``<bundle>/scripts/mssn_monai``),
that bundle. Never the working directory: the same command picks the same bundle from any folder."""


def bundle_config(config_file: str | os.PathLike, bundle_root: str | os.PathLike | None = None) -> Any:
    """Parse a bundle config with ``monai.bundle.ConfigParser`` (``bundle_root`` overridden when given)."""
    from monai.bundle import ConfigParser

    config_file = Path(config_file)
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file}: no such bundle config")
    parser = ConfigParser()
    try:
        parser.read_config(str(config_file))
    except ValueError as e:
        raise ValueError(f"{config_file}: cannot parse bundle config ({e})") from e
    if bundle_root is not None:
        parser["bundle_root"] = str(bundle_root)
    return parser


def load_state_dict(network: nn.Module, checkpoint: str | os.PathLike) -> nn.Module:
    """Load a state dict saved on any device into ``network`` (strict), with clear errors.

    Raises:
        FileNotFoundError: missing checkpoint.
        ValueError: the file is not a PyTorch checkpoint (or holds code: only tensors are ever loaded), its
            keys or shapes do not match ``network``, or a weight is NaN or infinite (a diverged run).
    """
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint}: no such checkpoint")
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises pickle, zip and runtime errors alike
        # not PyTorch's text: it advises retrying with weights_only=False, which would run the file's code
        raise ValueError(
            f"{checkpoint}: not a readable weights file ({type(e).__name__}); only plain state dicts of tensors "
            "are loaded, and nothing in the file was run"
        ) from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{checkpoint}: expected a state dict, got {type(state).__name__}")
    bad = [
        k for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point() and not v.isfinite().all()
    ]
    if bad:
        raise ValueError(
            f"{checkpoint}: {len(bad)} weight tensor(s) hold NaN or infinite values ({_some(bad)[2:]}): "
            "the training run that wrote them diverged; retrain or use other weights"
        )
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as e:
        expected = network.state_dict()
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        what = (
            f"{len(missing)} missing keys{_some(missing)}, {len(unexpected)} unexpected keys{_some(unexpected)}"
            if missing or unexpected
            else str(e).splitlines()[-1].strip()[:300]
        )
        raise ValueError(
            f"{checkpoint}: does not match the {type(network).__name__} built from the config ({what})"
        ) from e
    return network


def _some(keys: list[str], limit: int = 3) -> str:
    """``": a, b, c and 4 more"`` (empty for no keys): a short list for one-line messages."""
    if not keys:
        return ""
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ": " + ", ".join(keys[:limit]) + more


def load_network(
    checkpoint: str | os.PathLike,
    config_file: str | os.PathLike,
    network_id: str = "network_def",
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Instantiate ``network_id`` from a bundle config, load ``checkpoint``; channels-last on ``device``, eval mode."""
    parser = bundle_config(config_file)
    if network_id not in parser:
        raise KeyError(f"{config_file}: has no {network_id!r}")
    network = parser.get_parsed_content(network_id, instantiate=True)
    load_state_dict(network, checkpoint)
    return network.to(device=device, memory_format=torch.channels_last).eval()


def save_state_dict(network: nn.Module, path: str | os.PathLike) -> str:
    """Save ``network``'s state dict with every tensor on the CPU, atomically (temp file, then rename).

    A DDP / DataParallel wrapper is unwrapped first, so the keys have no ``module.`` prefix. Under a
    ``torch.distributed`` process group only rank 0 writes (as Ignite's ``DiskSaver`` does): the other
    ranks' networks lack what rank 0 alone computes (the FPR reference bank and calibration).

    Returns:
        the path written (by rank 0).
    """
    from mssn_monai.distributed import get_rank
    from mssn_monai.io import atomic_write

    if get_rank() > 0:
        return str(path)
    network = getattr(network, "module", network)
    state = {k: v.detach().cpu() for k, v in network.state_dict().items()}
    with atomic_write(path, "wb") as f:
        torch.save(state, f)
    return str(path)


def latest_checkpoint(directory: str | os.PathLike, prefix: str) -> str | None:
    """Path of the newest ``<prefix>_checkpoint_epoch=<n>.pt`` (MONAI ``CheckpointSaver`` naming), or ``None``."""
    import re

    pattern = re.compile(rf"^{re.escape(prefix)}_checkpoint_epoch=(\d+)\.pt$")
    found = []
    directory = Path(directory)
    if directory.is_dir():
        for p in directory.iterdir():
            m = pattern.match(p.name)
            if m:
                found.append((int(m.group(1)), p))
    return str(max(found)[1]) if found else None


def stain_normalizer(parser: Any) -> Any:
    """The bundle's detection-time stain normaliser (``stain_normalization``), or ``None`` when
    ``normalize_stain`` is false or absent."""
    if not as_flag(parser.get("normalize_stain", False), "normalize_stain") or "stain_normalization" not in parser:
        return None
    return parser.get_parsed_content("stain_normalization", instantiate=True)


def load_detector(
    bundle: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    normalize: bool = True,
    stage1_bf16: bool = False,
    int8: bool = False,
) -> Any:
    """The bundle's detector as a :class:`~mssn_monai.networks.detector.FieldDetector`.

    ``models/model.pt`` loaded into ``network_def`` of ``configs/inference.json``, with that config's
    stain normalisation: the same detector and preprocessing as the bundle's inference workflow.

    Args:
        bundle: the bundle folder (default: ``checkpoints.DEFAULT_BUNDLE``).
        device: where to run.
        normalize: use the bundle's stain normalisation when its config enables it.
        stage1_bf16: stage 1 in bfloat16 (:class:`~mssn_monai.networks.detector.FieldDetector`).
        int8: both stages' convolutions in 8-bit integers, at the scales of the bundle's
            ``models/int8_calibration.json`` (written by ``python -m mssn_monai quantize``); CPU only.

    Raises:
        FileNotFoundError: missing config or weights (or, with ``int8``, calibration).
        ValueError: weights that do not match the network, or a stage 2 without a reference bank.
    """
    from mssn_monai.networks.detector import FieldDetector

    root = Path(bundle) if bundle is not None else DEFAULT_BUNDLE
    config = root / "configs" / "inference.json"
    weights = root / "models" / MODEL_FILE
    detector = load_network(weights, config, "network_def", device)
    if detector.fpr.references.shape[0] == 0:
        raise ValueError(f"{weights}: stage 2 has no reference bank (untrained FPR); train with configs/train.json")
    normalizer = stain_normalizer(bundle_config(config)) if normalize else None
    calibration = load_int8_calibration(root) if int8 else None
    return FieldDetector(detector, normalizer, stage1_bf16=stage1_bf16, int8=calibration)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB chunks)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_int8_calibration(bundle: str | os.PathLike) -> dict[str, Any]:
    """The bundle's int8 calibration (``models/int8_calibration.json``), checked against its weights.

    Raises:
        FileNotFoundError: the bundle has none (the message names the command that writes one).
        ValueError: it was made for other weights (``weights_sha256`` differs from ``models/model.pt``'s):
            the weights were retrained or replaced since.
    """
    from mssn_monai.io import read_json

    root = Path(bundle)
    path = root / "models" / INT8_CALIBRATION_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no int8 calibration for --int8; write one with `python -m mssn_monai quantize --bundle {root}`"
        )
    calibration = read_json(path)
    stored = calibration.get("weights_sha256") if isinstance(calibration, dict) else None
    if stored is not None and stored != file_sha256(root / "models" / MODEL_FILE):
        raise ValueError(
            f"{path} was made for other weights than {root / 'models' / MODEL_FILE}; "
            f"re-run `python -m mssn_monai quantize --bundle {root}`"
        )
    return calibration
