"""What a training run is given: one settings object per kind of run, checked when made.

`HeadTraining` (``convlens train head``) and `SegmentationTraining` (``convlens train
segmentation``) share the loop settings of `Training`; the defaults here are the command's
defaults. A value out of range raises `DataError` naming the option to change.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from convlens.errors import DataError

MASK_SOURCES = ("true", "cam")
"""Where segmentation training masks come from: the scenes' true masks, or CAM pseudo-masks."""
SYNTHETIC_TRAIN_ITEMS = 2000
"""Training items of the synthetic shapes a head trains on when no ``limit`` is given."""


# settings that do not change what is trained (where, how, whether it resumes), and the
# loop's own, which `train_epochs` stores and compares itself
_NOT_IDENTITY = (
    "out",
    "resume",
    "threads",
    "trust_pickle",
    "keep_epochs",
    "checkpoint_every",
    "epochs",
    "batch_size",
    "learning_rate",
    "seed",
)


@dataclass(frozen=True)
class Training:
    """The training-loop settings every run shares: the output folder (``model.pt``,
    ``checkpoint.pt``, ``record.json``), held-out items, epochs, batch size, peak learning
    rate, the initialisation/shuffle seed, resuming from ``out/checkpoint.pt``, the
    checkpoint interval in epochs, torch's CPU threads, and whether a backbone or classifier
    file that needs full unpickling may be loaded (`load_model`'s ``trust_pickle``)."""

    out: Path
    test: int = 300
    epochs: int = 8
    batch_size: int = 32
    learning_rate: float = 4e-3
    seed: int = 0
    resume: bool = False
    checkpoint_every: int = 1
    threads: int = 2
    trust_pickle: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))
        for name in ("test", "epochs", "batch_size", "checkpoint_every", "threads"):
            if getattr(self, name) < 1:
                option = "--" + name.replace("_", "-")
                raise DataError(f"{option} must be >= 1, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise DataError(f"--lr must be > 0, got {self.learning_rate}")

    def identity(self) -> dict:
        """The settings that make the trained model what it is (head, backbone, data,
        masks, held-out items, ...): a checkpoint written with other ones is not resumed.
        Where the files go, resuming, threads and trust are left out, and so are the
        loop's own settings (`train_epochs` compares those)."""
        return {
            f.name: str(value) if isinstance(value, Path) else value
            for f in dataclasses.fields(self)
            if f.name not in _NOT_IDENTITY and (value := getattr(self, f.name)) is not None
        }

    def loop_keywords(self) -> dict:
        """The keywords of `train_epochs` these settings give (epochs ... checkpoint)."""
        return {
            "identity": self.identity(),
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "seed": self.seed,
            "checkpoint": self.out / "checkpoint.pt",
            "resume": self.resume,
            "checkpoint_every": self.checkpoint_every,
        }


@dataclass(frozen=True)
class HeadTraining(Training):
    """A localising ``head`` (cam, nin, acol, scouter) on ``backbone`` cut at ``layer``,
    trained on ``data`` (``"synthetic"``: the synthetic shapes, ``limit`` training items,
    2000 when None; else an ImageFolder tree, its first ``limit`` training items).
    ``head_options`` are the head's numeric keywords; ``keep_epochs`` also writes a model
    file per checkpoint under ``out/epochs/``."""

    head: str = "cam"
    data: str = "synthetic"
    backbone: str = "synthetic-shapes"
    layer: str = "features"
    freeze_backbone: bool = False
    random_backbone: bool = False
    limit: int | None = None
    head_options: dict[str, float] = field(default_factory=dict)
    keep_epochs: bool = False

    def __post_init__(self) -> None:
        from convlens.models.heads import HEADS

        super().__post_init__()
        if self.limit is not None and self.limit < 1:
            raise DataError(f"--limit must be >= 1, got {self.limit}")
        if self.head not in HEADS:
            raise DataError(f"unknown head {self.head!r}; use one of: {', '.join(HEADS)}")

    @property
    def train_items(self) -> int | None:
        """Training items to use: ``limit``, or 2000 synthetic ones (None: a whole folder)."""
        if self.data == "synthetic":
            return self.limit or SYNTHETIC_TRAIN_ITEMS
        return self.limit


@dataclass(frozen=True)
class SegmentationTraining(Training):
    """The DeepLabv3+-style `SegmentationNet` (``backbone_width`` channels in its first
    stage, ``output_stride`` 8 or 16, ``upsample`` nearest/bilinear/transposed) trained on
    ``train`` scenes from their true masks (``masks="true"``) or from CAM pseudo-masks of
    ``classifier`` (``masks="cam"``: a class's CAM at ``threshold`` of its maximum, after
    ``refine_steps`` colour-affinity rounds)."""

    train: int = 2000
    backbone_width: int = 16
    output_stride: int = 16
    upsample: str = "bilinear"
    masks: str = "true"
    classifier: str = "synthetic-scenes"
    threshold: float = 0.3
    refine_steps: int = 10

    def __post_init__(self) -> None:
        from convlens.models.segmentation import UPSAMPLING

        super().__post_init__()
        if self.train < 1 or self.backbone_width < 1:
            raise DataError("--train and --backbone-width must be >= 1")
        if self.masks not in MASK_SOURCES:
            raise DataError(f"--masks must be 'true' or 'cam', got {self.masks!r}")
        if self.upsample not in UPSAMPLING:
            raise DataError(f"--upsample must be one of {', '.join(UPSAMPLING)}")
        if self.refine_steps < 0:
            raise DataError(f"--refine-steps must be >= 0, got {self.refine_steps}")
        if not 0.0 < self.threshold < 1.0:
            raise DataError(
                f"--threshold is a share of a CAM's maximum in (0, 1) (the default 0.3), got "
                f"{self.threshold}"
            )
