"""lptlib: long-tailed classification by parameter-efficient fine-tuning of frozen ViTs and CLIP.

The reusable logic behind the notebooks: data (`lptlib.data`), backbones (`lptlib.models`),
metrics (`lptlib.metrics`), typed parameters (`lptlib.config`), miniature pretraining
(`lptlib.pretrain`) and figures (`lptlib.plots`).
"""

__version__ = "0.1.0"
