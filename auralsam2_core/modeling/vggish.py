"""VGGish audio embedding network, laid out so its keys match the released checkpoints.

AuralSAM2 keeps a frozen VGGish (the torchvggish port, no PCA) inside its fuser under
``vgg.``; the released checkpoints carry its weights. Input is a batch of 0.96 s log-mel
examples ``(N, 1, 96, 64)`` (see :mod:`auralsam2_core.media.log_mel`); output is ``(N, 128)`` after
a final ReLU.
"""

from __future__ import annotations

import torch
from torch import nn

# Channels of the 3x3 conv layers; "M" is a 2x2 max-pool. Gives the torchvggish indices
# features.{0,3,6,8,11,13} that the checkpoints use.
_FEATURE_PLAN = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M")


def _features() -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = 1
    for item in _FEATURE_PLAN:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, item, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            channels = item
    return nn.Sequential(*layers)


class VGGish(nn.Module):
    """VGGish without PCA post-processing: (N, 1, 96, 64) log-mel -> (N, 128) embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.features = _features()
        self.embeddings = nn.Sequential(
            nn.Linear(512 * 6 * 4, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, 128),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (N, 512, 6, 4)
        # The TF original flattens channel-last (N, 6, 4, 512); the released weights expect it.
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)
        return self.embeddings(x)
