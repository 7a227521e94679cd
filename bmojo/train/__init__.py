from bmojo.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from bmojo.train.config import TrainConfig
from bmojo.train.loop import TrainingDiverged, TrainingInterrupted, TrainResult, evaluate, train

__all__ = ["TrainConfig", "TrainResult", "train", "evaluate", "save_checkpoint", "load_checkpoint",
           "CheckpointError", "TrainingDiverged", "TrainingInterrupted"]
