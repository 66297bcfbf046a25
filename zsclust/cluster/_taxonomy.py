"""AMI at coarser taxonomic levels (study §8: iNaturalist-2021 from kingdom to species).

A clustering of 10,000 species may split species apart and still group genera or families well; the study
reports the AMI of the same predicted clusters against each coarser level of the true labels. zsclust
reads the lineage from the class names, when every class name carries it:

* iNaturalist-2021's category folders, ``00000_Animalia_Annelida_Clitellata_Haplotaxida_Lumbricidae_Lumbricus_terrestris``
  (an id, then kingdom, phylum, class, order, family, genus and the species epithet);
* any class name written as its lineage from the top rank down, separated by ``" > "``
  (``Insecta > Diptera > Cecidomyiidae > Cecidomyiidae sp. 12``), with the ranks unnamed (``level1``, ...).

Each level becomes the metric ``ami_<level>`` (the finest level, the classes themselves, is ``ami``).
BIOSCAN-1M's lineage (order to species) lives in its metadata file, not its folder names: write the
folder names in the ``" > "`` form to get its levels.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

INAT_LEVELS = ("kingdom", "phylum", "class", "order", "family", "genus")
_INAT = re.compile(r"^\d+_([A-Za-z]+)_([A-Za-z]+)_([A-Za-z]+)_([A-Za-z]+)_([A-Za-z]+)_([A-Za-z]+)_\S+$")
_SEPARATOR = " > "


def taxonomy(class_names: Sequence[str] | None) -> dict[str, np.ndarray] | None:
    """Level name → the code of each class at that level (coarsest first), or ``None`` when the names carry
    no lineage. Only levels with at least two groups and fewer groups than classes are returned (one group
    leaves nothing to find; a level as fine as the classes repeats ``ami``)."""
    names = [str(c) for c in class_names or ()]
    if len(names) < 2:
        return None
    matches = [_INAT.match(n) for n in names]
    if all(matches):
        lineages = [m.groups() for m in matches]
        levels = INAT_LEVELS
    elif all(_SEPARATOR in n for n in names):
        parts = [n.split(_SEPARATOR) for n in names]
        depth = min(len(p) for p in parts) - 1  # the last part is the class itself
        if depth < 1 or len({len(p) for p in parts}) > 1:
            return None
        lineages = [tuple(p[:depth]) for p in parts]
        levels = tuple(f"level{i + 1}" for i in range(depth))
    else:
        return None
    out = {}
    for i, level in enumerate(levels):
        path = [lineage[: i + 1] for lineage in lineages]  # a genus is its whole lineage: the same name elsewhere differs
        _, codes = np.unique(np.array(["/".join(p) for p in path]), return_inverse=True)
        if 2 <= codes.max() + 1 < len(names):  # one group has nothing to find; as many as the classes is `ami`
            out[level] = codes.astype(np.int64)
    return out or None


def taxonomic_ami(labels_true: np.ndarray, labels_pred: np.ndarray, levels: dict[str, np.ndarray]) -> dict[str, float]:
    """``ami_<level>`` of the predicted clusters against the true labels mapped to each level (noise is a
    label, as for ``ami``)."""
    from sklearn.metrics import adjusted_mutual_info_score

    y = np.asarray(labels_true)
    return {f"ami_{level}": float(adjusted_mutual_info_score(codes[y], labels_pred)) for level, codes in levels.items()}


__all__ = ["INAT_LEVELS", "taxonomic_ami", "taxonomy"]
