"""zsclust: can a pretrained image encoder cluster a dataset it never saw?"""

__version__ = "0.1.0"
