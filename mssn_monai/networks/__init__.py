"""Networks of the two MSSN stages: the stage-1 FNR candidate generator (``fnr``)."""

from mssn_monai.networks.fnr import (
    FUSED_KEY,
    INPUT_RANGE,
    OUTPUT_STRIDE,
    FNRSubModel,
    MultiScaleFNR,
    conv_receptive_field,
    extract_patch,
    pad_symmetric,
)

__all__ = [
    "FNRSubModel",
    "FUSED_KEY",
    "INPUT_RANGE",
    "OUTPUT_STRIDE",
    "MultiScaleFNR",
    "conv_receptive_field",
    "extract_patch",
    "pad_symmetric",
]
