"""The Lightning callback that runs the clustering pipeline when prediction ends."""

from __future__ import annotations

from lightning.pytorch.callbacks import Callback


class ClusteringCallback(Callback):
    """Runs :class:`ClusteringPipeline` on the merged embeddings, on global zero only.

    It must come after the :class:`~zsclust.embed.ShardWriter` in the trainer's callbacks (``embed()``
    puts the writer first), whose ``on_predict_end`` merges the shards. There is no barrier after the
    pipeline: the other ranks may leave while rank 0 clusters, so a long clustering job cannot trip
    a collective timeout.
    """

    def __init__(self, pipeline):
        self.pipeline = pipeline
        self.results = None

    def on_predict_end(self, trainer, pl_module):
        if not trainer.is_global_zero:
            return
        from zsclust.embed import ShardWriter

        writer = next((cb for cb in trainer.callbacks if isinstance(cb, ShardWriter)), None)
        if writer is None or writer.result is None:
            raise RuntimeError("ClusteringCallback needs a ShardWriter before it in the trainer's callbacks.")
        bar = trainer.progress_bar_callback
        if bar is not None:  # Lightning closes it after this hook: the jobs' lines would follow the open bar
            bar.on_predict_end(trainer, pl_module)
        self.results = self.pipeline.run(writer.result)
