"""Networks of the two MSSN stages: the stage-1 FNR candidate generator (``fnr``), the stage-2
Siamese false-positive reducer (``fpr``), both as one detector (``detector``, the bundle's
``network_def``), and the BatchNorm statistics alignment that moves a network to a new look
(``batchnorm``)."""

from mssn_monai.networks.batchnorm import batch_norm_layers, batch_norm_statistics, shift_batch_norm
from mssn_monai.networks.detector import FieldDetector, MSSNDetector, detection_map_to_points
from mssn_monai.networks.fnr import (
    FUSED_KEY,
    INPUT_RANGE,
    OUTPUT_STRIDE,
    FNRSubModel,
    MultiScaleFNR,
    conv_receptive_field,
)
from mssn_monai.networks.fpr import (
    DEFAULT_CALIBRATION,
    MITOSIS_CLASS,
    NUM_CLASSES,
    SiameseEmbedding,
    build_reference_bank,
    distance_similarity,
    fit_calibration,
    fpr_vote,
    standardize_patches,
    vote_offsets,
)

__all__ = [
    "batch_norm_layers",
    "batch_norm_statistics",
    "shift_batch_norm",
    "FNRSubModel",
    "FUSED_KEY",
    "INPUT_RANGE",
    "OUTPUT_STRIDE",
    "MultiScaleFNR",
    "conv_receptive_field",
    "MSSNDetector",
    "FieldDetector",
    "detection_map_to_points",
    "DEFAULT_CALIBRATION",
    "MITOSIS_CLASS",
    "NUM_CLASSES",
    "SiameseEmbedding",
    "build_reference_bank",
    "distance_similarity",
    "fit_calibration",
    "fpr_vote",
    "standardize_patches",
    "vote_offsets",
]
