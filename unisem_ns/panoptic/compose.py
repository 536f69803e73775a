"""Panoptic composition: every pixel gets (class, instance) from the semantic channel and the instance codes
(docs/methods/panoptic.md, steps 6-8). No nerfstudio import.

Class ids follow the scene's ``gt/classes.json`` (0 = void); instance ids are ``code + 1`` for thing pixels and
0 for stuff pixels (one segment per stuff class), so 0 never names an object.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = [
    "DEFAULT_STUFF_CLASSES",
    "split_stuff_things",
    "thing_mask",
    "compose_panoptic",
    "panoptic_colours",
    "match_classes",
]

#: Class names treated as stuff by default (intersected with the run's class names, case-insensitive): the
#: background classes of ScanNet / Replica / Panoptic Lifting's indoor scenes, and a few outdoor ones.
DEFAULT_STUFF_CLASSES: Tuple[str, ...] = (
    "wall", "floor", "ceiling", "window", "door", "curtain", "blinds", "rug", "carpet", "floor mat", "stairs",
    "column", "beam", "sky", "ground", "road", "grass",
)


def _norm(name: str) -> str:
    return " ".join(str(name).lower().replace("_", " ").split())


def split_stuff_things(class_names: Sequence[str], stuff: Sequence[str] = DEFAULT_STUFF_CLASSES,
                       void_id: int = 0) -> Tuple[List[int], List[int]]:
    """(stuff ids, thing ids) of ``class_names`` (index = class id; ``void_id`` is neither): a class is stuff
    when its name is in ``stuff`` (case and ``_``/space insensitive), a thing otherwise."""
    wanted = {_norm(s) for s in stuff}
    stuff_ids, thing_ids = [], []
    for i, name in enumerate(class_names):
        if i == void_id:
            continue
        (stuff_ids if _norm(name) in wanted else thing_ids).append(i)
    return stuff_ids, thing_ids


def thing_mask(num_classes: int, thing_ids: Sequence[int]) -> torch.Tensor:
    """[C] bool, True at the thing class ids."""
    out = torch.zeros(num_classes, dtype=torch.bool)
    if len(thing_ids):
        out[torch.as_tensor(list(thing_ids), dtype=torch.long)] = True
    return out


def compose_panoptic(pixel_classes: torch.Tensor, codes: torch.Tensor, code_class: torch.Tensor,
                     is_thing: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(classes, instances) ``[...]`` long of one view.

    Args:
        pixel_classes: ``[...]`` class id of each pixel from the semantic channel (0 = none).
        codes: ``[...]`` code index of each pixel (the instance head's readout).
        code_class: ``[L]`` class id of each code (its class votes' majority), 0 = none (no votes, or not
            confident enough: the caller decides).
        is_thing: ``[C]`` bool over class ids.

    The rule (docs/methods/panoptic.md, step 8), for a pixel with code k, code class c_k and pixel class s:
        1. s is stuff: (s, 0) - stuff is decided per pixel, one segment per stuff class;
        2. s is a thing: (c_k if c_k is a thing else s, k + 1) - the object's code gives its instance, and a code
           that voted for a thing class gives all its thing pixels that one class;
        3. s is 0 (no class): (c_k, k + 1 if c_k is a thing else 0).
    """
    dev = codes.device
    code_class = code_class.to(dev).long()
    is_thing = is_thing.to(dev).bool()
    s = pixel_classes.to(dev).long()
    codes = codes.long()
    ck = code_class[codes]
    ck_thing = (ck > 0) & is_thing[ck]
    s_thing = (s > 0) & is_thing[s]
    s_none = s <= 0
    classes = torch.where(s_thing & ck_thing, ck, s)
    classes = torch.where(s_none, ck, classes)
    has_instance = s_thing | (s_none & ck_thing)
    instances = torch.where(has_instance, codes + 1, torch.zeros_like(codes))
    return classes, instances


def panoptic_colours(classes: torch.Tensor, instances: torch.Tensor, num_classes: int,
                     num_instances: int) -> torch.Tensor:
    """``[..., 3]`` colours of a panoptic map: thing pixels in their instance's palette colour, stuff pixels in a
    muted (half-saturated) colour of their class, void black."""
    from unisem_ns.language.query_field import palette

    dev = classes.device
    cls_pal = 0.5 * palette(max(num_classes, 1)).to(dev) + 0.25
    inst_pal = palette(max(num_instances, 1) + 1).to(dev)
    out = torch.where((instances > 0)[..., None], inst_pal[instances.clamp(0, num_instances)],
                      cls_pal[classes.clamp(0, max(num_classes, 1) - 1)])
    return torch.where((classes > 0)[..., None] | (instances > 0)[..., None], out, torch.zeros_like(out))


def match_classes(query_embeddings: torch.Tensor, label_embeddings: torch.Tensor,
                  label_ids: Optional[Sequence[int]] = None) -> torch.Tensor:
    """[Q] class id of the label each text query is closest to (cosine of their text embeddings ``[Q, D]`` and
    ``[K, D]``); ``label_ids`` maps label index -> class id (default: index + 1, the label set without void)."""
    cos = F.normalize(query_embeddings.float(), dim=-1) @ F.normalize(label_embeddings.float(), dim=-1).T
    best = cos.argmax(dim=-1)
    ids = torch.as_tensor(list(label_ids), dtype=torch.long) if label_ids is not None else torch.arange(cos.shape[1]) + 1
    return ids.to(best.device)[best]
