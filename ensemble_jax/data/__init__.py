"""Data in and out: the KeypointDataset container, synthetic scenes, readers for
DeepLabCut / Lightning Pose / COCO / TFDS, letterboxing, and prediction/shuffle writers."""
from ensemble_jax.data.dataset import DatasetError, KeypointDataset, concatenate
from ensemble_jax.data.export import (dlc_sorted_order, export_dlc_shuffles, import_dlc_shuffles,
                                      write_member_predictions, write_predictions_csv)
from ensemble_jax.data.letterbox import letterbox_image, to_original, to_train
from ensemble_jax.data.load import detect_format, load_dataset
from ensemble_jax.data.dlc import read_dlc_project
from ensemble_jax.data.lightning_pose import read_lightning_pose
from ensemble_jax.data.coco import read_coco
from ensemble_jax.data.tfds_io import read_tfds, write_tfds
