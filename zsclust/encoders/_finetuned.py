"""The study's own fine-tuned encoders ('[FT]'), loaded from a local folder of checkpoints.

Lowe et al. fine-tuned some self-supervised backbones on ImageNet-1k and loaded them from a folder
(``ft-models/``) as ``ft_<name>.pth``: the weights under ``"model"`` in the base encoder's own key
layout, the classification head (``fc.*`` / ``head.*``) dropped, a strict load. VICReg's file holds
``nn.Sequential(backbone, head)``: the backbone under ``0.``, the head under ``1.``. These files are
not published, so the only source is a folder: ``weights=DIR`` (or the file itself), else
``$ZSCLUST_FINETUNED_DIR``, else ``./ft-models`` as in the study. Each entry is its base entry with
that source and filter; preprocessing and features stay the base entry's.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from ..errors import WeightsNotFoundError
from ._helpers import select_prefix, unwrap
from ._registry import get_encoder_spec, register_encoder

__all__ = ["finetuned_filter", "finetuned_dir"]

ENV_DIR = "ZSCLUST_FINETUNED_DIR"


def finetuned_dir() -> Path:
    """Where the study's fine-tuned checkpoints are looked for when no ``weights=`` is given."""
    return Path(os.environ.get(ENV_DIR) or "ft-models").expanduser()


def finetuned_filter(base_filter):
    """The study's fine-tuned layout on top of the base entry's filter (which drops the head)."""

    def filter_fn(state_dict, model) -> dict:
        sd = unwrap(state_dict)
        if sd and all(k.startswith(("0.", "1.")) for k in sd):  # nn.Sequential(backbone, head)
            sd = select_prefix(sd, "0.")
        return base_filter(sd, model)

    return filter_fn


def _in_folder(name: str, file_name: str):
    def locate() -> str:
        path = finetuned_dir() / file_name
        if not path.is_file():
            raise WeightsNotFoundError(
                f"Encoder '{name}' loads the study's fine-tuned checkpoint '{file_name}', which is not published "
                f"and is not in '{finetuned_dir()}'. Pass weights=DIR (the folder holding it) or the file itself, "
                f"or set {ENV_DIR}."
            )
        return str(path)

    return locate


# base entry, the study's encoder name (its checkpoint is ft-models/ft_<study name>.pth)
for _base, _study_name in (("resnet50.mocov3", "mocov3_resnet50"), ("vit_base_patch16_224.mocov3", "mocov3_vit_base"),
                           ("resnet50.dino", "dino_resnet50"), ("vit_base_patch16_224.dino", "dino_vitb16"),
                           ("resnet50.vicreg", "vicreg_resnet50")):
    _spec = get_encoder_spec(_base)
    _name, _file = f"{_base}_ft", f"ft_{_study_name}.pth"
    register_encoder(dataclasses.replace(
        _spec,
        name=_name,
        group="fine-tuned",
        paper_name=f"{_spec.paper_name} [FT]",
        description=f"{_spec.paper_name} fine-tuned on ImageNet-1k by the study (local checkpoint {_file})",
        weights_url=None,
        sha256=None,
        file_name=_file,
        weights_file=_in_folder(_name, _file),
        checkpoint_filter=finetuned_filter(_spec.checkpoint_filter),
        weights_layout=f"the study's fine-tuned checkpoint {{'model': {{<{_spec.paper_name} keys>, fc.*/head.*}}}}"
        + (" (backbone under '0.', head under '1.')" if "vicreg" in _base else ""),
    ))
