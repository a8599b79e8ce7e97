"""Natural-looking test images made on the spot, for export parity checks and tests.

Parity measured on white noise says little about real inputs: natural images are smooth, with
strong low frequencies, edges and saturated regions. These images sum a few random low-resolution
fields upsampled bicubically (smooth blobs), a random linear gradient (lighting) and one
hard-edged disc (an object boundary), plus a little pixel noise, and are clipped to 0..255.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def natural_images(count: int, size: int | tuple[int, int], channels: int = 3, seed: int = 0) -> torch.Tensor:
    """uint8 (count, channels, H, W) images, the same for the same arguments."""
    height, width = (size, size) if isinstance(size, int) else size
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator)

    image = torch.zeros(count, channels, height, width)
    for cells, weight in ((2, 0.5), (5, 0.3), (12, 0.15)):  # coarse to fine smooth structure
        field = rand(count, channels, cells, cells) * 2 - 1
        image += weight * F.interpolate(field, size=(height, width), mode="bicubic", align_corners=False)
    rows = torch.linspace(-1, 1, height).view(1, 1, height, 1)
    cols = torch.linspace(-1, 1, width).view(1, 1, 1, width)
    slope = (rand(count, 2) * 2 - 1).view(count, 2, 1, 1)
    image += 0.4 * (slope[:, :1] * rows + slope[:, 1:] * cols)
    centre = rand(count, 2).view(count, 2, 1, 1)
    radius = (0.15 + 0.25 * rand(count)).view(count, 1, 1)
    inside = ((rows[:, 0] + 1) / 2 - centre[:, 0]) ** 2 + ((cols[:, 0] + 1) / 2 - centre[:, 1]) ** 2 < radius**2
    image += inside.unsqueeze(1) * (rand(count, channels, 1, 1) * 1.2 - 0.6)
    image += 0.03 * torch.randn(image.shape, generator=generator)
    return ((image * 0.5 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
