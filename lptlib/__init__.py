"""lptlib: long-tailed classification by parameter-efficient fine-tuning of frozen ViTs and CLIP.

The reusable logic behind the notebooks, in the order a run flows through it:
`lptlib.config` (params.yaml sections composed and validated) -> `lptlib.data` (datasets, samplers, transforms)
-> `lptlib.models` (backbones, prompts, PEFT modules, heads, the MoE scorer) and `lptlib.objectives` (every
training-only equation) -> `lptlib.recipes` (one per method: builds a `Run`) -> `lptlib.engine.fit` (the one
training loop) -> `lptlib.report` (metrics, analysis, figures, the results table).
"""

__version__ = "0.1.0"
