"""ensemble-jax: subset ensembles of heatmap pose networks, trained together in JAX."""
from ensemble_jax.data.dataset import KeypointDataset, DatasetError

__version__ = "0.1.0"
