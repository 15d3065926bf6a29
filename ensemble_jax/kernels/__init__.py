"""Pure, jitted kernels: no state, shapes in every docstring, a NumPy twin in tests/.

peaks              find_peaks, multi_peak_entropy, frame_mpe
margins            heatmap_margin, gt_probability, gt_confidence
influence          subset_influence, self_influence, Influence
datamodel          ridge_datamodel, fit_datamodel (ridge/LASSO, strata), datamodel_cv
attribution        stratified_influence, permutation_pvalues, t_pvalues, bh_qvalues,
                   data_oob, members_needed
lds                predict_from_effects, lds_per_test, lds_bootstrap
representativeness representativeness
spread             ensemble_spread, consensus
"""
from ensemble_jax.kernels.attribution import (OOB, Stratified, bh_qvalues, data_oob,
                                              members_needed, permutation_pvalues,
                                              stratified_influence, t_pvalues)
from ensemble_jax.kernels.datamodel import (datamodel_cv, fit_datamodel, predict_datamodel,
                                            ridge_datamodel)
from ensemble_jax.kernels.lds import lds_bootstrap, lds_per_test, predict_from_effects
from ensemble_jax.kernels.influence import Influence, self_influence, subset_influence
from ensemble_jax.kernels.margins import gt_confidence, gt_probability, heatmap_margin
from ensemble_jax.kernels.peaks import find_peaks, frame_mpe, multi_peak_entropy
from ensemble_jax.kernels.representativeness import representativeness
from ensemble_jax.kernels.spread import consensus, ensemble_spread

__all__ = [
    "OOB",
    "Stratified",
    "bh_qvalues",
    "data_oob",
    "datamodel_cv",
    "fit_datamodel",
    "lds_bootstrap",
    "lds_per_test",
    "members_needed",
    "permutation_pvalues",
    "predict_datamodel",
    "predict_from_effects",
    "stratified_influence",
    "t_pvalues",
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
