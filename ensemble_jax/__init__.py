"""ensemble-jax: subset ensembles of heatmap pose networks, trained together in JAX."""
from ensemble_jax.data.dataset import DatasetError, KeypointDataset
from ensemble_jax.data.synthetic import synthetic_dataset
from ensemble_jax.models.heatmap_net import ModelConfig
from ensemble_jax.subsets import (bootstrap_subsets, kfold_subsets, leave_one_out_subsets,
                                  nested_subsets, random_subsets)
from ensemble_jax.training.config import ExecConfig, TrainConfig
from ensemble_jax.training.result import EnsembleResult, Predictions
from ensemble_jax.training.trainer import EnsembleTrainer

__version__ = "0.1.0"

__all__ = [
    "DatasetError", "EnsembleResult", "EnsembleTrainer", "ExecConfig", "KeypointDataset",
    "ModelConfig",
    "Predictions", "TrainConfig", "bootstrap_subsets", "kfold_subsets",
    "leave_one_out_subsets", "nested_subsets", "random_subsets", "synthetic_dataset",
]
