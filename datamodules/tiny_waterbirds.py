"""Writes a tiny Waterbirds in the exact on-disk format, for tests and smoke runs without the real data.

Same ``metadata.csv`` header and columns, CUB-style image paths and Places-style ``place_filename`` as the
release (``shared/DATA_FORMATS.md``), with 8x8 JPEGs and a handful of images per group::

    python -c "from lightning_sam.datamodules.tiny_waterbirds import *; write_tiny_waterbirds('/tmp/wb')"
    python train.py --config configs/waterbirds.yaml --data.root /tmp/wb --trainer.fast_dev_run true \\
        --model.body.init_args.pretrained false
"""

from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Literal

from PIL import Image

# (y, place) group sizes per split, group order 2 * y + place; val/test balance backgrounds within each class
TINY_COUNTS = {0: (6, 3, 2, 5), 1: (4, 4, 2, 2), 2: (5, 5, 3, 3)}
_SPECIES = {
    0: ("010.Red_winged_Blackbird", "026.Bronzed_Cowbird"),
    1: ("001.Black_footed_Albatross", "059.California_Gull"),
}
_PLACES = {0: ("/b/bamboo_forest", "/f/forest/broadleaf"), 1: ("/o/ocean", "/l/lake/natural")}


def write_tiny_waterbirds(
    root: str | Path,
    layout: Literal["original", "wilds"] = "original",
    counts: dict[int, tuple[int, int, int, int]] | None = None,
    seed: int = 0,
) -> Path:
    """Writes ``<root>/waterbird_complete95_forest2water2/`` (or ``<root>/waterbirds_v1.0/``) with tiny images.

    Args:
        root: the data root.
        layout: the original release's folder name, or WILDS' (which adds an empty ``RELEASE_v1.0.txt``).
        counts: images per group ``2 * y + place`` for each split code (0 train, 1 val, 2 test).
        seed: seeds the image colours and the row order.

    Returns:
        The dataset folder.
    """
    counts = TINY_COUNTS if counts is None else counts
    folder = Path(root) / ("waterbird_complete95_forest2water2" if layout == "original" else "waterbirds_v1.0")
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    rows = []
    for split, sizes in sorted(counts.items()):
        for group, size in enumerate(sizes):
            y, place = divmod(group, 2)
            rows += [(y, split, place)] * size
    rng.shuffle(rows)
    with open(folder / "metadata.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["img_id", "img_filename", "y", "split", "place", "place_filename"])
        for img_id, (y, split, place) in enumerate(rows, start=1):
            species = _SPECIES[y][img_id % 2]
            name = species.split(".", 1)[1].title().replace("-", "_")
            img_filename = f"{species}/{name}_{img_id:04d}_{100 + img_id}.jpg"
            (folder / species).mkdir(exist_ok=True)
            colour = tuple(rng.randrange(256) for _ in range(3))
            Image.new("RGB", (8, 8), colour).save(folder / img_filename, format="JPEG")
            place_filename = f"{_PLACES[place][img_id % 2]}/{img_id:08d}.jpg"
            writer.writerow([img_id, img_filename, y, split, place, place_filename])
    if layout == "wilds":
        (folder / "RELEASE_v1.0.txt").touch()
    return folder
