"""Training: `fit(TrainConfig(...))`, one process or DDP under `torchrun`.

Modules: `config` (TrainConfig, presets filled in and checked), `distributed` (DDP plumbing),
`state` (data, model, optimizer and loaders of a run), `loop` (fit, train_step, evaluate_loader),
`outputs` (the run folder: checkpoints, log.csv, TensorBoard, image grids), `resume` (step-exact
resume.pt, stops on SIGTERM / SIGINT). Using a trained model:
`spikingjelly_vae.inference`.
"""
from ..runtime import resolve_device
from .config import AMP_MODES, TrainConfig, build_from_config
from .loop import NonFiniteLossError, TrainingInterrupted, evaluate_loader, fit, train_step
from .outputs import RUN_FILES, save_recon_grid, save_sample_grid
from .state import make_loaders

__all__ = ["TrainConfig", "NonFiniteLossError", "TrainingInterrupted", "fit", "train_step", "evaluate_loader", "build_from_config",
           "make_loaders", "resolve_device", "save_recon_grid", "save_sample_grid", "RUN_FILES", "AMP_MODES"]
