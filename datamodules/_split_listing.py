"""Checks of a metadata file that lists images (and their split): duplicate rows, and images in two splits.

A duplicate row silently doubles an image's weight; one image in two splits leaks it from training into
evaluation. Both load without complaint in the suites this field uses. Here an identical duplicate is dropped with
a warning that counts them, and an image listed in two splits, or twice with different labels, is an error naming
the file, the image and the lines.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from pathlib import Path

from pytorch_lightning.utilities import rank_zero_warn

SPLIT_NAMES = ("train", "val", "test")  # split codes 0, 1, 2 in both CelebA and Waterbirds metadata


def first_rows(
    path: Path,
    names: Sequence[str],
    lines: Sequence[int],
    splits: Sequence[int] | None = None,
    values: Sequence[Hashable] | None = None,
) -> list[int]:
    """Indices of the rows to keep, the first of each image; warns about duplicates, refuses contradictory ones.

    Args:
        path: the metadata file, for the messages.
        names: each row's image (a normalised relative path or file name).
        lines: each row's line number in ``path``.
        splits: each row's split code (0 train, 1 val, 2 test), if the file assigns splits.
        values: each row's labels; a duplicate with other labels is an error.

    Raises:
        ValueError: an image is listed in two splits, or twice with different labels.

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     keep = first_rows(Path("m.csv"), ["a", "b", "a"], [2, 3, 4], splits=[0, 0, 0])
        >>> keep, "1 duplicate row" in str(caught[0].message)
        ([0, 1], True)
        >>> first_rows(Path("m.csv"), ["a", "a"], [2, 3], splits=[0, 2])
        Traceback (most recent call last):
        ...
        ValueError: m.csv lists the image 'a' in two splits, train (line 2) and test (line 3): ...
    """
    first: dict[str, int] = {}
    keep: list[int] = []
    duplicates: dict[str, int] = {}
    for i, name in enumerate(names):
        j = first.setdefault(name, i)
        if j == i:
            keep.append(i)
            continue
        if splits is not None and splits[i] != splits[j]:
            raise ValueError(
                f"{path} lists the image {name!r} in two splits, {_split(splits[j])} (line {lines[j]}) and "
                f"{_split(splits[i])} (line {lines[i]}): evaluation would see an image the model was trained on. "
                "Keep one row per image (use the release's own metadata file)."
            )
        if values is not None and values[i] != values[j]:
            raise ValueError(
                f"{path} lists the image {name!r} twice with different labels (lines {lines[j]} and {lines[i]}). "
                "Keep one row per image (use the release's own metadata file)."
            )
        duplicates[name] = duplicates.get(name, 0) + 1
    if duplicates:
        shown = ", ".join(repr(n) for n in list(duplicates)[:3])
        rank_zero_warn(
            f"{path}: {sum(duplicates.values())} duplicate row(s) of {len(duplicates)} image(s) (e.g. {shown}); "
            f"using the first row of each, {len(keep)} images in all. Remove the duplicates to silence this."
        )
    return keep


def _split(code: int) -> str:
    return SPLIT_NAMES[code] if 0 <= code < len(SPLIT_NAMES) else f"split {code}"
