"""Pure, jitted kernels: no state, shapes in every docstring, a NumPy twin in tests/.

peaks              find_peaks, multi_peak_entropy, frame_mpe
margins            heatmap_margin, gt_probability, gt_confidence
influence          subset_influence, self_influence, Influence
datamodel          ridge_datamodel
representativeness representativeness
spread             ensemble_spread, consensus
"""
from ensemble_jax.kernels.datamodel import ridge_datamodel
from ensemble_jax.kernels.influence import Influence, self_influence, subset_influence
from ensemble_jax.kernels.margins import gt_confidence, gt_probability, heatmap_margin
from ensemble_jax.kernels.peaks import find_peaks, frame_mpe, multi_peak_entropy
from ensemble_jax.kernels.representativeness import representativeness
from ensemble_jax.kernels.spread import consensus, ensemble_spread

__all__ = [
    "Influence",
    "consensus",
    "ensemble_spread",
    "find_peaks",
    "frame_mpe",
    "gt_confidence",
    "gt_probability",
    "heatmap_margin",
    "multi_peak_entropy",
    "representativeness",
    "ridge_datamodel",
    "self_influence",
    "subset_influence",
]
