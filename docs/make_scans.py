"""Make the photo panels of docs/scans.md: the embedded model (EfficientNet-Lite0) over the
real photos installed packages ship (`docs/photo_list.py`), top-9 images of a few channels
of ``blocks.1`` and ``blocks.3`` with guided-backprop projections (the whole atlas of every
channel is ``convlens scan photos.txt --layers blocks.1,blocks.3 --projections guided``;
this script draws only the channels shown in the docs).

Run: ``python docs/make_scans.py OUT_DIR``
"""

from __future__ import annotations

import sys
from pathlib import Path

from convlens.render.images import save_png
from convlens.render.scans import top_units_panel
from convlens.scan.topk import top_activating

sys.path.insert(0, str(Path(__file__).parent))
from photo_list import photo_paths  # noqa: E402

CHANNELS = {"blocks.1": [5, 9], "blocks.3": [8, 3]}


def main(out: Path) -> None:
    photos = [str(path) for path in photo_paths()]
    result = top_activating("efficientnet_lite0", photos, list(CHANNELS), projections=("guided",))
    for layer, channels in CHANNELS.items():
        for view in result.channel_views(layer, channels):
            title = f"{layer} channel {view.channel}: top 9 of {len(photos)} photos by max"
            panel = top_units_panel(
                view.patches, view.projections["guided"], title, inside=view.inside
            )
            print(save_png(panel, out / f"photos-{layer}-channel-{view.channel}.png"))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/images/scans"))
