"""The LightningModule whose predict steps turn image batches into embeddings."""

from __future__ import annotations

import lightning.pytorch as pl
import torch


class EmbeddingModule(pl.LightningModule):
    """Runs an encoder over predict batches from :func:`zsclust.data.collate_batch`.

    The encoder runs in eval mode with channels_last inputs; autocast comes from the Trainer's
    ``precision``. Outputs go back to the CPU as float32 so the prediction writer can stream them
    to disk. There are no collective calls here: in predict mode ranks may see different batch counts.
    """

    def __init__(self, encoder: torch.nn.Module, channels_last: bool = True):
        super().__init__()
        self.encoder = encoder
        self.channels_last = channels_last

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
            feats = self(images).float().cpu()
        else:  # every image of the batch was skipped as unreadable
            feats = torch.zeros(0, getattr(self.encoder, "num_features", 0))
        return {
            "embeddings": feats,
            "labels": batch["label"].cpu(),
            "indices": batch["index"].cpu(),
            "skipped": batch["skipped"].cpu(),
        }
