"""Tiny DomainBed folder trees, ``<root>/<folder>/<domain>/<class>/<image>``, with real JPEG and PNG files."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from lightning_sam.datamodules.domainbed import DATASETS

# OfficeHome's 65 classes are not listed in the code; a fixture uses a few real ones
OFFICE_HOME_CLASSES = ("Alarm_Clock", "Backpack", "Bike")


def write_domainbed(
    root: Path,
    dataset: str = "PACS",
    per_class: int = 5,
    lacking: tuple[tuple[str, str], ...] = (),
    classes: tuple[str, ...] | None = None,
    hidden: bool = True,
) -> Path:
    """Writes ``per_class`` 8x8 images per (domain, class), minus the ``(domain, class)`` folders in ``lacking``.

    Images alternate JPEG and PNG. With ``hidden``, ``.ipynb_checkpoints`` folders holding an image are added at
    the dataset, domain and class levels (Jupyter leaves them everywhere), plus a ``.DS_Store`` file.
    """
    spec = DATASETS[dataset]
    classes = classes or spec.classes or OFFICE_HOME_CLASSES
    folder = root / spec.folder
    for d, domain in enumerate(spec.domains):
        for c, name in enumerate(classes):
            if (domain, name) in lacking:
                continue
            class_dir = folder / domain / name
            class_dir.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                suffix = "jpg" if i % 2 == 0 else "png"
                Image.new("RGB", (8, 8), (40 * d, 20 * c, 10 * i)).save(class_dir / f"pic_{i:03d}.{suffix}")
    if hidden:
        first_domain, first_class = spec.domains[0], classes[0]
        for hidden_dir in (
            folder / ".ipynb_checkpoints",
            folder / first_domain / ".ipynb_checkpoints",
            folder / first_domain / first_class / ".ipynb_checkpoints",
        ):
            hidden_dir.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8)).save(hidden_dir / "pic_000-checkpoint.jpg")
        (folder / first_domain / ".DS_Store").write_bytes(b"\0")
    return folder
