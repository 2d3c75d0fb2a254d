"""Table I metrics: reconstruction MSE, FID, Inception Score, FAD (see docs/metrics.md).

Each metric takes an iterable of image batches in [-1, 1] (see `sources`), so it scores any model.
"""
from .fad import FADModel, ae_features, compute_fad, fad_test_stats, load_fad_model
from .fid import (clean_resize, compute_fid, fast_resize, fid_reference_stats, inception_features,
                  load_fid_inception)
from .frechet import frechet_distance, gaussian_stats
from .inception_score import compute_inception_score, inception_score_from_probs, load_is_inception
from .reconstruction import reconstruction_mse
from .resources import MetricUnavailable
from .sources import collect, dataset_batches, sample_batches, tensor_batches

__all__ = [
    "FADModel", "ae_features", "compute_fad", "fad_test_stats", "load_fad_model", "clean_resize",
    "compute_fid", "fast_resize", "fid_reference_stats", "inception_features", "load_fid_inception",
    "frechet_distance", "gaussian_stats", "compute_inception_score", "inception_score_from_probs",
    "load_is_inception", "reconstruction_mse", "MetricUnavailable", "collect", "dataset_batches",
    "sample_batches", "tensor_batches",
]
