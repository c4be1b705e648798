"""What a model is and where it looks: parameters, FLOPs and stage shapes at a resolution; attention maps.

```python
info = pvtkit.analysis.describe(pvtkit.PvtV2ForImageClassification, config, 512, 640)   # no weights needed
maps = pvtkit.analysis.attention_maps(model, pixel_values, query=(0.5, 0.4))            # [(title, 2-d array)]
```

Both work for every registered family (`pvtkit.models.family`); `pvtkit info` and `pvtkit attention` print and draw
them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .models import family as registry


def describe(model_class: type, config: Any, height: int, width: int) -> dict[str, Any]:
    """Architecture facts of `model_class(config)` at an input of `height` x `width`, computed on the meta device
    (no weights, no memory): parameters, multiply-accumulates (the papers' "FLOPs"), FLOPs (2 x MACs) and the
    family's per-stage (or per-token) shapes.

    Raises:
        ValueError: A size the model cannot take (e.g. a ViT side that is not a multiple of the patch).
    """
    from torch.utils.flop_counter import FlopCounterMode

    family = registry.family_of(model_class)
    with torch.device("meta"):
        model = model_class(config.copy()).eval()
    params = sum(p.numel() for p in model.parameters())
    head = sum(p.numel() for n, p in model.named_parameters() if n.startswith(tuple(model.head_prefixes)))
    with torch.device("meta"):  # native at this size: position embeddings of this size cost what interpolating does
        model.set_input_size((height, width))
    model.requires_grad_(False)  # counting, not training: no tensor of the pass needs a gradient hook
    pixels = torch.empty(1, config.num_channels, height, width, device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        out = model(pixels, output_hidden_states=True)
    return {
        "model_type": config.model_type,
        "class": model_class.__name__,
        "variant": config.published_variant(),
        "parameters": params,
        "head_parameters": head,
        "input": [config.num_channels, height, width],
        "macs": counter.get_total_flops() // 2,
        "flops": counter.get_total_flops(),
        "num_labels": config.num_labels if _labelled(model) else None,
        **family.describe(model.config, out),
    }


def key_grid(num_keys: int, height: int, width: int) -> tuple[int, int]:
    """The (rows, cols) of a flattened key map of `num_keys` cells whose aspect is closest to height x width."""
    best: tuple[float, tuple[int, int]] | None = None
    for rows in range(1, num_keys + 1):
        if num_keys % rows == 0:
            cols = num_keys // rows
            score = abs(math.log((rows / cols) / (height / width)))
            if best is None or score < best[0]:
                best = (score, (rows, cols))
    assert best is not None
    return best[1]


def attention_maps(
    model: Any, pixel_values: torch.Tensor, query: tuple[float, float] | None = None, layers: int = 4
) -> list[tuple[str, np.ndarray]]:
    """`[(title, 2-d map)]` of where the model looks in the first image, for up to `layers` layers spread over the
    depth (PVTv2: the last block of each stage; ViT: its transformer layers). Heads are averaged.

    Without `query`, a map shows what the [CLS] token attends to (models with one), or else how much attention each
    key position receives on average; with `query` = (x, y) as fractions of the width and height, what the token at
    that point attends to. Keys are drawn on their own grid (SRA's reduced map, linear SRA's 7x7).
    """
    with torch.inference_mode():
        out = model(pixel_values=pixel_values, output_attentions=True, output_hidden_states=True)
    found = model.attention_layers(out, pixel_values)
    n = len(found)
    chosen = sorted({max(0, round(n * (k + 1) / layers) - 1) for k in range(layers)})
    maps = []
    for title, weights, (h, w), prefix in (found[j] for j in chosen):
        attn = weights.float().mean(0)  # (queries, keys), heads averaged
        if query is not None:
            row = attn[prefix + min(int(query[1] * h), h - 1) * w + min(int(query[0] * w), w - 1)]
        else:
            row = attn[0] if prefix else attn.mean(0)
        keys = row[prefix:]
        rows, cols = key_grid(keys.numel(), h, w)
        maps.append((f"{title} ({rows}x{cols} keys)", keys.reshape(rows, cols).cpu().numpy()))
    return maps


def _labelled(model: Any) -> bool:
    """Whether the model's task predicts classes (a classifier's or a segmentation head's `num_labels`)."""
    from . import tasks

    try:
        return tasks.task_of(model).labelled
    except ValueError:
        return False
