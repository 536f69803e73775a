"""Named channels of one per-Gaussian feature parameter (no nerfstudio import).

The panoptic model stores its semantic latent and its instance feature in one ``features_sem`` parameter
``[N, d + e]`` and renders them in one pass into ``outputs["features"]`` ``[H, W, d + e]``. Which columns are
which is declared once, as a :class:`FeatureChannels` (an ordered name -> width map), and every reader asks it
for a channel by name instead of slicing ``[..., :6]`` / ``[..., 6:]`` in several places.
"""

from __future__ import annotations

from typing import Dict, Iterator, Mapping, Tuple

import torch

__all__ = ["FeatureChannels"]


class FeatureChannels(Mapping[str, int]):
    """Ordered, named column blocks of a feature tensor's last dimension.

    >>> ch = FeatureChannels({"semantic": 6, "instance": 16})
    >>> ch.total, ch.slice("instance")
    (22, slice(6, 22, None))
    """

    def __init__(self, widths: Mapping[str, int]) -> None:
        if not widths:
            raise ValueError("FeatureChannels needs at least one channel")
        self._widths: Dict[str, int] = {}
        self._slices: Dict[str, slice] = {}
        start = 0
        for name, width in widths.items():
            width = int(width)
            if width <= 0:
                raise ValueError(f"channel {name!r}: width must be positive, got {width}")
            self._widths[str(name)] = width
            self._slices[str(name)] = slice(start, start + width)
            start += width
        self.total = start

    # Mapping interface: name -> width, in order
    def __getitem__(self, name: str) -> int:
        return self._widths[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._widths)

    def __len__(self) -> int:
        return len(self._widths)

    def __repr__(self) -> str:
        return f"FeatureChannels({self._widths})"

    def slice(self, name: str) -> slice:
        """The columns of channel ``name``."""
        if name not in self._slices:
            raise KeyError(f"no feature channel {name!r}; channels: {list(self._widths)}")
        return self._slices[name]

    def channel(self, features: torch.Tensor, name: str) -> torch.Tensor:
        """Channel ``name`` of ``features`` ``[..., total]`` -> ``[..., width]`` (a view, gradients flow)."""
        if features.shape[-1] != self.total:
            raise ValueError(f"features have {features.shape[-1]} columns, the channels {dict(self._widths)} "
                             f"need {self.total}")
        return features[..., self.slice(name)]

    def split(self, features: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Every channel of ``features`` ``[..., total]``, by name."""
        return {name: self.channel(features, name) for name in self._widths}

    def join(self, **channels: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`split`: the named blocks ``[..., width]`` concatenated in channel order."""
        missing = set(self._widths) ^ set(channels)
        if missing:
            raise ValueError(f"join needs exactly the channels {list(self._widths)}; got {sorted(channels)}")
        for name, t in channels.items():
            if t.shape[-1] != self._widths[name]:
                raise ValueError(f"channel {name!r}: {t.shape[-1]} columns, want {self._widths[name]}")
        return torch.cat([channels[name] for name in self._widths], dim=-1)

    def as_dict(self) -> Dict[str, int]:
        return dict(self._widths)

    def items_with_slices(self) -> Tuple[Tuple[str, int, slice], ...]:
        return tuple((n, w, self._slices[n]) for n, w in self._widths.items())
