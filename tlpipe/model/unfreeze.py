"""Which part of the backbone fine-tuning trains (finetune.unfreeze), BatchNorm always frozen."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from tlpipe.model.backbones import Backbone

if TYPE_CHECKING:
    from tlpipe.config.finetune import UnfreezeParams


def freeze_batchnorm(layer: Any) -> int:
    """Set every BatchNormalization inside `layer` (nested models included) to trainable=False."""
    import keras

    count = 0
    for sub in _walk(layer):
        if isinstance(sub, keras.layers.BatchNormalization):
            sub.trainable = False
            count += 1
    return count


def _walk(layer: Any) -> list[Any]:
    out = [layer]
    for sub in getattr(layer, "layers", []):
        out.extend(_walk(sub))
    return out


def chosen_layers(backbone_model: Any, backbone: Backbone, u: UnfreezeParams) -> list[Any]:
    """The layers `u` names, checked against this backbone's depth and blocks."""
    top_layers, top_blocks, from_block, from_layer = u.top_layers, u.top_blocks, u.from_block, u.from_layer
    all_layers = list(backbone_model.layers)  # Keras order, input layer first (for from_layer)
    layers = [layer for layer in all_layers if type(layer).__name__ != "InputLayer"]
    blocks = backbone.blocks(all_layers)
    names = [name for name, _ in blocks]
    where = f"backbone {backbone.name!r}"
    if top_layers is not None:
        if top_layers > len(layers):
            raise ValueError(
                f"finetune.unfreeze.top_layers={top_layers} is beyond the depth of {where}: "
                f"expected at most {len(layers)} layers"
            )
        return layers[len(layers) - top_layers :]
    if top_blocks is not None:
        if top_blocks > len(blocks):
            raise ValueError(
                f"finetune.unfreeze.top_blocks={top_blocks} is beyond the {len(blocks)} blocks of {where} "
                f"({', '.join(names)}): expected at most {len(blocks)}"
            )
        return [layer for _, group in blocks[len(blocks) - top_blocks :] for layer in group]
    if from_block is not None:
        if from_block not in names:
            raise ValueError(
                f"finetune.unfreeze.from_block={from_block!r} is not a "
                f"block of {where}; expected one of: {', '.join(names)}"
            )
        return [layer for _, group in blocks[names.index(from_block) :] for layer in group]
    assert from_layer is not None  # the schema requires exactly one of the four
    if from_layer > len(all_layers):
        raise ValueError(
            f"finetune.unfreeze.from_layer={from_layer} is beyond the depth of {where}: "
            f"expected at most {len(all_layers)} (backbone.layers counts its input layer)"
        )
    return [layer for layer in all_layers[from_layer:] if type(layer).__name__ != "InputLayer"]


def unfreeze(backbone_model: Any, backbone: Backbone, u: UnfreezeParams) -> dict[str, Any]:
    """Make the chosen top of the backbone trainable (BatchNorm stays frozen). Returns what was
    unfrozen, for the reports."""
    chosen = chosen_layers(backbone_model, backbone, u)
    layers = [layer for layer in backbone_model.layers if type(layer).__name__ != "InputLayer"]
    blocks = backbone.blocks(list(backbone_model.layers))
    chosen_ids = {id(layer) for layer in chosen}
    backbone_model.trainable = True
    for layer in layers:
        layer.trainable = id(layer) in chosen_ids
    frozen_bn = freeze_batchnorm(backbone_model)
    trainable = int(sum(np.prod(v.shape) for v in backbone_model.trainable_weights))
    first = next((name for name, group in blocks if any(id(layer) in chosen_ids for layer in group)), None)
    return {
        "layers": len(chosen),
        "of_layers": len(layers),
        "first_block": first or "",
        "blocks": len({name for name, group in blocks for layer in group if id(layer) in chosen_ids}),
        "trainable_backbone_params": trainable,
        "frozen_batchnorm": frozen_bn,
    }
