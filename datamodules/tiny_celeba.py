"""Writes a tiny CelebA in the exact on-disk format, for tests and smoke runs without the real data.

The torchvision layout ``<root>/celeba/`` with all five official txt files (count and header lines, values
right-aligned in runs of spaces, as released) and ``img_align_celeba/000001.jpg ...``; or the Kaggle CSV variant
as WILDS lays it out, ``<root>/celebA_v1.0/`` (``list_attr_celeba.csv``, ``list_eval_partition.csv``).
"""

from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Literal

from PIL import Image

CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair Blond_Hair "
    "Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup High_Cheekbones "
    "Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose Receding_Hairline "
    "Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick "
    "Wearing_Necklace Wearing_Necktie Young"
).split()
# (Blond_Hair, Male) group sizes per partition, group order 2 * blond + male; blond males are the rarest
TINY_COUNTS = {0: (6, 5, 4, 2), 1: (3, 3, 2, 2), 2: (3, 3, 2, 2)}
_LANDMARKS = "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y"


def write_tiny_celeba(
    root: str | Path,
    layout: Literal["torchvision", "csv", "kaggle"] = "torchvision",
    counts: dict[int, tuple[int, int, int, int]] | None = None,
    seed: int = 0,
) -> Path:
    """Writes a tiny CelebA under ``root`` and returns its folder.

    Args:
        root: the data root.
        layout: ``"torchvision"`` (``celeba/``, txt files), ``"csv"`` (``celebA_v1.0/``, WILDS), or ``"kaggle"``
            (the CSV files with Kaggle's doubled ``img_align_celeba/img_align_celeba/``).
        counts: images per group ``2 * Blond_Hair + Male`` for each partition code (0 train, 1 valid, 2 test).
        seed: seeds the other attributes and the image colours.
    """
    counts = TINY_COUNTS if counts is None else counts
    folder = Path(root) / ("celeba" if layout == "torchvision" else "celebA_v1.0")
    images = folder / "img_align_celeba"
    if layout == "kaggle":
        images = images / "img_align_celeba"
    images.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    blond, male = CELEBA_ATTRIBUTES.index("Blond_Hair"), CELEBA_ATTRIBUTES.index("Male")
    rows = []  # (file, partition, 40 values), partitions in file order as released
    for partition, sizes in sorted(counts.items()):
        groups = [g for g, size in enumerate(sizes) for _ in range(size)]
        rng.shuffle(groups)
        for g in groups:
            values = [rng.choice((-1, 1)) for _ in CELEBA_ATTRIBUTES]
            values[blond], values[male] = (1 if g >= 2 else -1), (1 if g % 2 else -1)
            rows.append((f"{len(rows) + 1:06d}.jpg", partition, values))
    for name, _, _ in rows:
        colour = tuple(rng.randrange(256) for _ in range(3))
        Image.new("RGB", (9, 11), colour).save(images / name, format="JPEG")
    if layout == "torchvision":
        _write_txt(folder, rows, rng)
    else:
        with open(folder / "list_attr_celeba.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image_id", *CELEBA_ATTRIBUTES])
            writer.writerows([name, *values] for name, _, values in rows)
        with open(folder / "list_eval_partition.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image_id", "partition"])
            writer.writerows([name, partition] for name, partition, _ in rows)
    return folder


def _write_txt(folder: Path, rows: list[tuple[str, int, list[int]]], rng: random.Random) -> None:
    n = len(rows)
    with open(folder / "list_attr_celeba.txt", "w") as f:
        f.write(f"{n}\n{' '.join(CELEBA_ATTRIBUTES)} \n")
        for name, _, values in rows:
            f.write(name + " " + " ".join(f"{v:2d}" for v in values) + "\n")  # "-1  1": runs of spaces
    with open(folder / "list_eval_partition.txt", "w") as f:
        f.writelines(f"{name} {partition}\n" for name, partition, _ in rows)
    with open(folder / "identity_CelebA.txt", "w") as f:
        f.writelines(f"{name} {rng.randrange(1, 10178)}\n" for name, _, _ in rows)
    with open(folder / "list_bbox_celeba.txt", "w") as f:
        f.write(f"{n}\nimage_id x_1 y_1 width height\n")
        f.writelines(
            f"{name:<20}{rng.randrange(200):>4}{rng.randrange(200):>4}{200:>4}{250:>4}\n" for name, _, _ in rows
        )
    with open(folder / "list_landmarks_align_celeba.txt", "w") as f:
        f.write(f"{n}\n{_LANDMARKS}\n")
        f.writelines(name + "".join(f"{rng.randrange(60, 120):>6}" for _ in range(10)) + "\n" for name, _, _ in rows)
