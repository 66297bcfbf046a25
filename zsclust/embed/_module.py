"""The LightningModule whose predict steps turn image batches into embeddings."""

from __future__ import annotations

import lightning.pytorch as pl
import torch

from ._forward_batch import ForwardBatchTuner


class EmbeddingModule(pl.LightningModule):
    """Runs an encoder over predict batches from :func:`zsclust.data.collate_batch`.

    The encoder runs in eval mode with channels_last inputs; autocast comes from the Trainer's
    ``precision``. Outputs go back to the CPU as float32 so the prediction writer can stream them
    to disk. There are no collective calls here: in predict mode ranks may see different batch counts.
    With ``tune_forward_batch`` (the loader's batch size), each batch runs in the chunk size that
    :class:`ForwardBatchTuner` finds fastest; without it, whole batches.
    """

    def __init__(self, encoder: torch.nn.Module, channels_last: bool = True, tune_forward_batch: int | None = None):
        super().__init__()
        self.encoder = encoder
        self.channels_last = channels_last
        self.forward_batch = ForwardBatchTuner(tune_forward_batch) if tune_forward_batch else None

    def on_predict_start(self) -> None:
        self.encoder.eval()
        if self.channels_last:
            self.encoder.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images)

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        images = batch["image"]
        if len(images):
            if self.channels_last and images.ndim == 4:
                images = images.contiguous(memory_format=torch.channels_last)
            feats = (self.forward_batch(self, images) if self.forward_batch is not None else self(images)).float().cpu()
        else:  # every image of the batch was skipped as unreadable
            feats = torch.zeros(0, getattr(self.encoder, "num_features", 0))
        return {
            "embeddings": feats,
            "labels": batch["label"].cpu(),
            "indices": batch["index"].cpu(),
            "skipped": batch["skipped"].cpu(),
        }
