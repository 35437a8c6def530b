"""Training for real use: every model on built-in or user data, resumable, under torchrun.

    armodel_fast.training.datasets     load_dataset, Dataset, Split (the user's .npy/.npz/.pt/.csv)
    armodel_fast.training.models       build_model (every model and head by name)
    armodel_fast.training.loop         Trainer, Settings (optimizers, schedules, early stopping)
    armodel_fast.training.checkpoint   atomic, checksummed checkpoint files
    armodel_fast.training.distributed  torchrun / DistributedDataParallel
    armodel_fast.training.recipes      recipes/*.toml
    armodel_fast.training.commands     the train and eval commands
"""
from .checkpoint import CheckpointError
from .datasets import DataError, Dataset, load_dataset
from .loop import Settings, Trainer
from .models import MODELS, build_model

__all__ = ["CheckpointError", "DataError", "Dataset", "MODELS", "Settings", "Trainer", "build_model",
           "load_dataset"]
