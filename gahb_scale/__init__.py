"""gahb-scale: scaling studies of generalization in bias-free diffusion denoisers.

The science core (data, models, training, sampling, analysis) is plain PyTorch and imports
neither Ray nor MLflow; the study layer (`gahb_scale.study`) runs it at scale.
"""

__version__ = "0.7.18"
