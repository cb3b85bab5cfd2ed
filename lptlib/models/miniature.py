"""The miniature foundation models (docs/methods.md#the-offline-miniature), registered with timm and open_clip.

- `vit-mini` is timm's `VisionTransformer` registered as `vit_mini_patch7_28`: 6 blocks (LPT's group prompts
  go into the second half, blocks 4-6, as into blocks 7-12 of ViT-B/16; 6 rather than 12 blocks halve the cost
  of every run so the pipeline fits its time budget with several seeds), width 128, 4 heads, 7-px patches on
  28-px images (16 patch tokens + CLS), normalisation mean = std = 0.5 like the IN21k ViTs.
- `clip-mini` is an open_clip `CLIP` built from `configs/clip-mini.json` (registered with
  `open_clip.add_model_config`): the same 6 x 128 vision tower, a 4-layer text tower of width 128
  over open_clip's real BPE tokenizer, CLIP mean/std and bicubic resizing.

Both are pretrained by the `00_pretrain` stage on the source pool only and saved as ordinary
weight files, then loaded through the same code path as downloaded weights.
"""

from __future__ import annotations

from pathlib import Path

import open_clip
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

VIT_MINI = "vit_mini_patch7_28"
CLIP_MINI = "clip-mini"
#: lptlib name -> (family, architecture name inside that family)
MINIATURE_ARCHS = {"vit-mini": ("timm", VIT_MINI), "clip-mini": ("open_clip", CLIP_MINI)}

default_cfgs = generate_default_cfgs(
    {
        VIT_MINI: {
            "url": "",
            "num_classes": 4,
            "input_size": (3, 28, 28),
            "mean": (0.5, 0.5, 0.5),
            "std": (0.5, 0.5, 0.5),
            "interpolation": "bilinear",
            "crop_pct": 1.0,
            "first_conv": "patch_embed.proj",
            "classifier": "head",
            "license": "same as Fashion-MNIST (MIT)",
        },
    }
)


@register_model
def vit_mini_patch7_28(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT-Mini/7 for 28 x 28 inputs: the miniature stand-in for ViT-B/16 (lptlib name `vit-mini`)."""
    args = dict(
        img_size=28,
        patch_size=7,
        embed_dim=128,
        depth=6,
        num_heads=4,
        mlp_ratio=4.0,
        class_token=True,
        global_pool="token",
    )
    return build_model_with_cfg(
        VisionTransformer, VIT_MINI, pretrained, pretrained_filter_fn=checkpoint_filter_fn, **dict(args, **kwargs)
    )


_CONFIG_DIR = Path(__file__).parent / "configs"
if CLIP_MINI not in open_clip.list_models():
    open_clip.add_model_config(_CONFIG_DIR / f"{CLIP_MINI}.json")
