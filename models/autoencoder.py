"""A convolutional autoencoder for 28x28 digits: conv encoder -> 32 numbers -> transposed-conv
("deconvolution") decoder.

One module, one network: `ConvAutoencoder` with an `AutoencoderConfig`. `encode` and
`decode` are separate so the service can reconstruct (decode(encode(x))) and interpolate
(decode of points between two codes).

Input contract: the same 28x28 canvas `models.preprocess.digit_canvas` produces (white ink
on black, MNIST layout), *raw* in [0, 1] with no mean/std normalisation: the output is a
sigmoid in [0, 1], so input and reconstruction live on one scale and the reconstruction
error is a plain per-pixel MSE. `models.preprocess.to_autoencoder_tensor` builds it.

Shapes (default channels (32, 64, 64)):
  encoder: (B, 1, 28, 28) -conv3-> (B, 32, 28, 28) -conv4/2-> (B, 64, 14, 14)
           -conv3-> (B, 64, 14, 14) -conv4/2-> (B, 64, 7, 7) -flatten, linear-> (B, 32)
  decoder: (B, 32) -linear-> (B, 64, 7, 7) -deconv4/2-> (B, 64, 14, 14) -deconv3->
           (B, 32, 14, 14) -deconv4/2-> (B, 32, 28, 28) -deconv3-> (B, 1, 28, 28) -sigmoid
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

SIDE = 28


@dataclass
class AutoencoderConfig:
    code_size: int = 32
    channels: list[int] = field(default_factory=lambda: [32, 64, 64])  # at 28x28, 14x14, 7x7

    def __post_init__(self) -> None:
        self.channels = [int(c) for c in self.channels]  # JSON gives lists; keep one form
        if len(self.channels) != 3:
            raise ValueError(f"channels must name 3 widths (28x28, 14x14, 7x7), got {self.channels}")

    def to_dict(self) -> dict:
        return {"code_size": self.code_size, "channels": list(self.channels)}


def _conv(c_in: int, c_out: int, kernel: int, stride: int) -> list[nn.Module]:
    # k3/s1/p1 keeps the size; k4/s2/p1 halves it exactly (28 -> 14 -> 7).
    return [nn.Conv2d(c_in, c_out, kernel, stride, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


def _deconv(c_in: int, c_out: int, kernel: int, stride: int) -> list[nn.Module]:
    # ConvTranspose2d k4/s2/p1 doubles the size exactly (7 -> 14 -> 28); k3/s1/p1 keeps it.
    return [nn.ConvTranspose2d(c_in, c_out, kernel, stride, padding=1, bias=False), nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True)]


class ConvAutoencoder(nn.Module):
    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        self.config = config
        c1, c2, c3 = config.channels
        self.encoder = nn.Sequential(
            *_conv(1, c1, 3, 1),  # (B, c1, 28, 28)
            *_conv(c1, c2, 4, 2),  # (B, c2, 14, 14)
            *_conv(c2, c2, 3, 1),  # (B, c2, 14, 14)
            *_conv(c2, c3, 4, 2),  # (B, c3, 7, 7)
            nn.Flatten(),
            nn.Linear(c3 * 7 * 7, config.code_size),  # the code: no activation, any real values
        )
        self.decoder = nn.Sequential(
            nn.Linear(config.code_size, c3 * 7 * 7, bias=False),
            nn.Unflatten(1, (c3, 7, 7)),
            nn.BatchNorm2d(c3),
            nn.ReLU(inplace=True),
            *_deconv(c3, c2, 4, 2),  # (B, c2, 14, 14)
            *_deconv(c2, c1, 3, 1),  # (B, c1, 14, 14)
            *_deconv(c1, c1, 4, 2),  # (B, c1, 28, 28)
            nn.ConvTranspose2d(c1, 1, 3, 1, padding=1),  # (B, 1, 28, 28) logits
        )
        # Why: ~80% of MNIST pixels are black (mean ink 0.13). Starting the output at
        # sigmoid(-2) ~ 0.12 instead of 0.5 skips the first hundred steps of learning "black".
        nn.init.constant_(self.decoder[-1].bias, -2.0)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 28, 28) or (B, 1, 28, 28) ink in [0, 1] -> code (B, code_size)."""
        if x.dim() == 3:
            x = x.unsqueeze(1)
        return self.encoder(x)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """z: (B, code_size) -> pre-sigmoid (B, 1, 28, 28); training uses it for a stable loss."""
        return self.decoder(z)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z: (B, code_size) -> image (B, 1, 28, 28) in [0, 1]."""
        return torch.sigmoid(self.decoder(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 28, 28) or (B, 1, 28, 28) in [0, 1] -> reconstruction (B, 1, 28, 28) in [0, 1]."""
        return self.decode(self.encode(x))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def per_image_mse(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error per image over its 784 pixels: (B, [1,] 28, 28) x2 -> (B,)."""
    return (reconstruction.reshape(len(reconstruction), -1) - target.reshape(len(target), -1)).pow(2).mean(1)


def psnr(mse: float) -> float:
    """Peak signal-to-noise ratio in dB for pixels in [0, 1] (peak 1)."""
    return float(10 * np.log10(1.0 / max(mse, 1e-12)))


def typicality(mse: float, quantiles: list[float]) -> float:
    """Share of reference digits (MNIST test) reconstructed *worse* than an image with error
    `mse`, from the reference's error quantiles q[0..100] (ascending, evenly spaced levels).

    1.0: easier to reconstruct than every reference digit; ~0.5: a median digit; 0.0: worse
    than all of them -- the autoencoder has not seen anything like it (a scribble, noise).
    """
    return float(typicality_of(np.asarray([mse]), quantiles)[0])


def typicality_of(mse: np.ndarray, quantiles: list[float]) -> np.ndarray:
    """`typicality` for a batch: per-image errors (B,) -> (B,) shares, rounded to 4 places."""
    q = np.asarray(quantiles, dtype=np.float64)
    levels = np.linspace(0.0, 1.0, len(q))
    # np.interp clamps outside [q0, q100]: below the best digit -> level 0 -> typicality 1.
    return np.round(1.0 - np.interp(np.asarray(mse, dtype=np.float64), q, levels), 4)
