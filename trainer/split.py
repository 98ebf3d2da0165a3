"""Stratified random partitions: the paper's 8/1/1 split and its 10-fold protocol.

Clips of each label are shuffled with the seed and dealt round-robin into ten
parts (each label starting where the previous one stopped, so parts stay equal in
size). Fold k tests on part k, validates on part k+1 and trains on the other
eight. Splitting is by source file: pitch-shifted copies always follow their
original, which keeps them out of validation and test (the seed split copies
independently, which is why its augmented figures are optimistic).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

PARTS = 10


@dataclass(frozen=True)
class Split:
    """Source paths of one fold, sorted."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]


def partition(labels: dict[str, str], seed: int, parts: int = PARTS) -> dict[str, int]:
    """Part index (0..parts-1) of every source path, stratified by its label."""
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[str]] = {}
    for path in sorted(labels):
        by_label.setdefault(labels[path], []).append(path)
    out: dict[str, int] = {}
    cursor = 0
    for label in sorted(by_label):
        paths = by_label[label]
        for i in rng.permutation(len(paths)):
            out[paths[i]] = cursor % parts
            cursor += 1
    return out


def fold_split(labels: dict[str, str], fold: int, seed: int, parts: int = PARTS) -> Split:
    """Train/val/test paths of ``fold``; raises ValueError naming a label too small to train on."""
    if not 0 <= fold < parts:
        raise ValueError(f"fold {fold} outside 0..{parts - 1}")
    part = partition(labels, seed, parts)
    test = sorted(p for p, k in part.items() if k == fold)
    val = sorted(p for p, k in part.items() if k == (fold + 1) % parts)
    train = sorted(p for p, k in part.items() if k not in (fold, (fold + 1) % parts))
    missing = sorted(set(labels.values()) - {labels[p] for p in train})
    if missing:
        counts = {m: sum(1 for v in labels.values() if v == m) for m in missing}
        raise ValueError(
            "too few clips for an 8/1/1 split: "
            + ", ".join(f"label {m!r} has {n}" for m, n in counts.items())
            + " and none left for training in fold "
            + str(fold)
        )
    if not val or not test:
        raise ValueError(f"too few clips ({len(labels)}) for validation and test parts; need at least {parts}")
    return Split(tuple(train), tuple(val), tuple(test))


MIN_TEST_CLIPS = 5  # per class: below this a class's test recall moves in steps of 20 % or more


def thin_split_warnings(split: Split, labels: dict[str, str], folds: int) -> list[str]:
    """What makes this split's validation or test figures unreliable: a class missing from a part,
    or fewer than ``MIN_TEST_CLIPS`` test clips of a class. Running all folds tests every clip once."""
    advice = "" if folds >= PARTS else f"; --folds {PARTS} tests every clip once and reports the mean"
    out = []
    for part in ("test", "val"):
        counts = Counter(labels[p] for p in getattr(split, part))
        missing = sorted(set(labels.values()) - set(counts))
        if missing:
            out.append(f"the {part} part has no clip of {', '.join(missing)}: its {part} accuracy says nothing about them{advice}")
    counts = Counter(labels[p] for p in split.test)
    thin = sorted((n, label) for label, n in counts.items() if n < MIN_TEST_CLIPS)
    if thin:
        listed = ", ".join(f"{label} {n}" for n, label in thin)
        out.append(f"the test part holds fewer than {MIN_TEST_CLIPS} clips of some classes ({listed}): "
                   f"test accuracy is coarse{advice}")
    return out
