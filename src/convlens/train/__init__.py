"""Training: a small loop, the GAP + linear benchmark CNN, the shipped synthetic-shapes model."""

from convlens.train.loop import TrainingLog, accuracy, train_classifier
from convlens.train.models import ShapesNet

__all__ = ["ShapesNet", "TrainingLog", "accuracy", "train_classifier"]
