"""A small conv audio encoder for compact models (the bundled demo model).

VGGish alone is 72 M parameters (288 MB), too big to ship inside the package; a fuser built
with ``audio_encoder="tiny"`` uses this instead. Same interface as VGGish: one 0.96 s log-mel
example ``(N, 1, 96, 64)`` per channel in, one embedding ``(N, out_dim)`` out (ReLU).
"""

from __future__ import annotations

import torch
from torch import nn


class TinyAudioEncoder(nn.Module):
    def __init__(self, out_dim: int, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for c in (width // 2, width, width * 2, width * 2):
            layers += [nn.Conv2d(channels, c, 3, stride=2, padding=1), nn.BatchNorm2d(c),
                       nn.ReLU(inplace=True)]
            channels = c
        self.features = nn.Sequential(*layers)  # (N, 2w, 6, 4)
        self.embeddings = nn.Sequential(nn.Linear(channels * 6 * 4, out_dim), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embeddings(self.features(x).flatten(1))
