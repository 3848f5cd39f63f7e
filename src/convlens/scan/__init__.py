"""Dataset-wide passes: the top-activating patches of every channel, embeddings and their
nearest neighbours and 2-D maps; streamed, sharded under torchrun and resumable."""

from convlens.scan.topk import (
    LayerTop,
    TopActivations,
    TopUnit,
    representative_stages,
    top_activating,
)

__all__ = ["LayerTop", "TopActivations", "TopUnit", "representative_stages", "top_activating"]
