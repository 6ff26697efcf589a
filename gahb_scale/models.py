"""Bias-free denoisers: BF batch-norm, the paper's UNet and BF-CNN, and a registry by name.

Every network here predicts the *noise* (the residual); the denoiser is `f(y) = y - net(y)`.
No layer has an additive constant, so in eval mode `net(a*y) = a*net(y)` for every a > 0:
the network is piecewise linear and positively homogeneous, which makes `f(y) = J(y) y` exact.
"""

from __future__ import annotations

import torch
from torch import nn


class BFBatchNorm(nn.Module):
    """Bias-free batch-norm: divide each channel by its std (no mean subtraction), scale by a gain.

    Subtracting a mean would add an input-dependent constant and break homogeneity, so only the
    scale is normalised. In eval mode the divisor is a running std, which keeps the layer linear.
    """

    def __init__(self, channels: int, momentum: float = 0.1, eps: float = 1e-5, gain_init_std: float = 2.0 / 9.0 / 64.0,
                 gain_init_clamp: float = 0.025):
        super().__init__()
        self.momentum = momentum
        self.eps = eps
        self.register_buffer("running_sd", torch.ones(1, channels, 1, 1))
        gains = (torch.randn(1, channels, 1, 1) * gain_init_std).clamp_(-gain_init_clamp, gain_init_clamp)
        self.gains = nn.Parameter(gains)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            sd = torch.sqrt(x.var(dim=(0, 2, 3), keepdim=True, unbiased=False) + self.eps)
            with torch.no_grad():  # lerp_ written out: vmap (packed training) has no batching rule for it
                self.running_sd.add_(sd.to(self.running_sd.dtype) - self.running_sd, alpha=self.momentum)
        else:
            sd = self.running_sd
        return x * (self.gains / sd)  # one pass over x, not two


def _conv(c_in: int, c_out: int, kernel_size: int = 3) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2, bias=False)


def _conv_bn_relu(c_in: int, c_out: int, kernel_size: int = 3) -> list[nn.Module]:
    return [_conv(c_in, c_out, kernel_size), BFBatchNorm(c_out), nn.ReLU()]


def kaiming_init_(net: nn.Module) -> nn.Module:
    """Kaiming-normal (fan_in) init of every conv weight, as in the authors' training code."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
    return net


class BiasFreeUNet(nn.Module):
    """The paper's bias-free UNet (defaults: 3 blocks of 64/128/256 channels, 2 mid convs at 512).

    Encoder block b: `convs_per_block` convs at `width * 2**b` channels (the very first conv is
    followed by ReLU only), then 2x2 average pooling. Mid: `mid_convs` convs at `width * 2**blocks`.
    Decoder block b: 2x2 stride-2 transposed conv, channel concatenation with the skip, convs;
    a final 3x3 conv maps to the image channels.
    """

    def __init__(self, channels: int = 1, width: int = 64, blocks: int = 3, convs_per_block: int = 2,
                 mid_convs: int = 2, kernel_size: int = 3):
        super().__init__()
        if blocks < 1 or convs_per_block < 1 or mid_convs < 1 or width < 1:
            raise ValueError("UNet needs width, blocks, convs_per_block and mid_convs >= 1")
        self.blocks = blocks
        widths = [width * 2**b for b in range(blocks + 1)]

        self.encoder = nn.ModuleList()
        for b in range(blocks):
            c_in = channels if b == 0 else widths[b - 1]
            if b == 0:  # the paper's first conv has no batch-norm
                layers = [_conv(c_in, widths[0], kernel_size), nn.ReLU()]
            else:
                layers = _conv_bn_relu(c_in, widths[b], kernel_size)
            for _ in range(convs_per_block - 1):
                layers += _conv_bn_relu(widths[b], widths[b], kernel_size)
            self.encoder.append(nn.Sequential(*layers))
        self.pool = nn.AvgPool2d(2)

        mid = _conv_bn_relu(widths[blocks - 1], widths[blocks], kernel_size)
        for _ in range(mid_convs - 1):
            mid += _conv_bn_relu(widths[blocks], widths[blocks], kernel_size)
        self.mid = nn.Sequential(*mid)

        self.upsample = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for b in reversed(range(blocks)):
            self.upsample.append(nn.ConvTranspose2d(widths[b + 1], widths[b], kernel_size=2, stride=2, bias=False))
            # after concatenation with the skip the block sees 2*widths[b] channels
            n_convs = convs_per_block - 1 if b == 0 else convs_per_block  # block 0 ends in the output conv
            layers = []
            for i in range(max(n_convs, 1)):
                layers += _conv_bn_relu(2 * widths[b] if i == 0 else widths[b], widths[b], kernel_size)
            if b == 0:
                layers.append(_conv(widths[0], channels, kernel_size))
            self.decoder.append(nn.Sequential(*layers))
        kaiming_init_(self)

    @property
    def size_multiple(self) -> int:
        return 2**self.blocks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.mid(x)
        for up, block, skip in zip(self.upsample, self.decoder, reversed(skips)):
            x = block(torch.cat([up(x), skip], dim=1))
        return x


class BFCNN(nn.Module):
    """The bias-free CNN of Mohan et al. (2020): `layers` 3x3 convs at `width` channels.

    conv -> ReLU, then `layers - 2` x (conv -> BF-BN -> ReLU), then a conv to the image channels.
    """

    def __init__(self, channels: int = 1, width: int = 64, layers: int = 21, kernel_size: int = 3):
        super().__init__()
        if layers < 3 or width < 1:
            raise ValueError("BF-CNN needs layers >= 3 and width >= 1")
        body = [_conv(channels, width, kernel_size), nn.ReLU()]
        for _ in range(layers - 2):
            body += _conv_bn_relu(width, width, kernel_size)
        body.append(_conv(width, channels, kernel_size))
        self.net = nn.Sequential(*body)
        kaiming_init_(self)

    size_multiple = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


ARCHITECTURES: dict[str, type[nn.Module]] = {"unet": BiasFreeUNet, "bfcnn": BFCNN}


def build_model(name: str, seed: int | None = None, **params) -> nn.Module:
    """Instantiate an architecture by registry name with its constructor hyper-parameters.

    With a seed, the initial weights depend on it alone (the global RNG is left untouched), so
    the two models of a split pair can start from the same or from different weights on purpose.
    """
    try:
        cls = ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(sorted(ARCHITECTURES))}") from None
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        try:
            return cls(**params)
        except TypeError as exc:  # an unknown or misspelt hyper-parameter
            raise ValueError(f"architecture {name!r}: {exc}") from None


def denoise(net: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """The denoiser `f(y) = y - net(y)` of a residual network."""
    return y - net(y)


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
