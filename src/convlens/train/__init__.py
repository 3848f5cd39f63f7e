"""Training: a small loop and the run that trains the shipped synthetic-shapes model."""

from convlens.train.loop import TrainingLog, accuracy, train_classifier

__all__ = ["TrainingLog", "accuracy", "train_classifier"]
