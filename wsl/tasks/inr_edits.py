"""Image edits that define the INR-editing targets: ``target = edit(render(W))``.

Every edit acts on a batch ``(N, *shape)`` of 1-D signals or 2-D images with
values in ``[-1, 1]`` (bright strokes on a dark background for the digits)
and works along every grid axis the same way:

``dilate``         grey-level dilation, a 3-wide (3x3) max filter:
                   ``y[p] = max_{|q - p|_inf <= 1} x[q]`` (points outside the grid are ignored)
``erode``          grey-level erosion, the 3-wide min filter ``y = -dilate(-x)``
``contrast``       ``y = clip(m + 1.5 (x - m), -1, 1)`` with ``m`` the image's mean value
``gaussian_blur``  separable Gaussian filter, ``sigma = 1`` sample, 5 taps
                   (normalised), edge values replicated beyond the border

These are the NFN editing tasks (dilation, contrast) plus their natural
companions. The edits are fixed maps: the editing meta-model learns to
reproduce one of them in weight space.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from wsl.tasks.inr import INRError

__all__ = ["CONTRAST", "EDITS", "BLUR_SIGMA", "apply_edit"]

EDITS = ("dilate", "erode", "contrast", "gaussian_blur")
CONTRAST = 1.5
BLUR_SIGMA = 1.0
_BLUR_RADIUS = 2


def _as_channels(x: torch.Tensor) -> torch.Tensor:
    if x.dim() not in (2, 3):
        raise INRError(f"apply_edit: expected a batch of 1-D signals (N, L) or 2-D images (N, H, W), "
                       f"got shape {tuple(x.shape)}")
    return x.unsqueeze(1)


def _max_filter(x: torch.Tensor) -> torch.Tensor:
    c = _as_channels(x)
    pool = F.max_pool1d if c.dim() == 3 else F.max_pool2d
    return pool(c, kernel_size=3, stride=1, padding=1).squeeze(1)


def _blur(x: torch.Tensor) -> torch.Tensor:
    c = _as_channels(x)
    taps = torch.arange(-_BLUR_RADIUS, _BLUR_RADIUS + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-taps.square() / (2 * BLUR_SIGMA ** 2))
    k = k / k.sum()
    r = _BLUR_RADIUS
    if c.dim() == 3:
        return F.conv1d(F.pad(c, (r, r), mode="replicate"), k.view(1, 1, -1)).squeeze(1)
    c = F.conv2d(F.pad(c, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(c, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1)).squeeze(1)


def apply_edit(name: str, images: torch.Tensor) -> torch.Tensor:
    """The edit ``name`` (one of :data:`EDITS`) of every image/signal in ``images`` ``(N, *shape)``."""
    if name == "dilate":
        return _max_filter(images)
    if name == "erode":
        return -_max_filter(-images)
    if name == "contrast":
        _as_channels(images)
        m = images.flatten(1).mean(1).view(-1, *([1] * (images.dim() - 1)))
        return (m + CONTRAST * (images - m)).clamp(-1.0, 1.0)
    if name == "gaussian_blur":
        return _blur(images)
    raise INRError(f"unknown edit {name!r}; valid: {', '.join(EDITS)}")

