"""The paper's networks, for one-channel 256x256 mel images in [-1, 1].

- `ResnetGenerator`: CycleGAN's resnet_9blocks (c7s1-64, two stride-2 downs, residual
  blocks at 4x ngf, two transposed-conv ups, c7s1-1, tanh).  11,365,633 parameters
  with the defaults.
- `PatchCritic`: the 70x70 PatchGAN (n_layers 3): a grid of real/fake logits, one
  per overlapping 70x70 patch.  2,762,689 parameters with the defaults.
- `UnetGenerator`: Pix2Pix's unet_256 (8 downs to 1x1, skip connections, dropout
  in the innermost wide layers).

Instance norm carries no affine parameters (as in the reference code), so conv
layers before it keep their bias; batch norm is affine and the conv before it has
no bias.  Weights start as normal(0, 0.02).
"""
from __future__ import annotations

import torch
from torch import nn


def norm_layer(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    if kind == "batch":
        return nn.BatchNorm2d(channels, affine=True, track_running_stats=True)
    raise ValueError(f"unknown norm {kind!r} (instance or batch)")


def conv_bias(norm: str) -> bool:
    # Batch norm's shift makes a conv bias redundant; instance norm here has none.
    return norm != "batch"


class ResnetBlock(nn.Module):
    def __init__(self, channels: int, norm: str, dropout: bool):
        super().__init__()
        bias = conv_bias(norm)
        layers = [nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3, bias=bias),
                  norm_layer(norm, channels), nn.ReLU(True)]
        if dropout:
            layers.append(nn.Dropout(0.5))
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3, bias=bias),
                   norm_layer(norm, channels)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    def __init__(self, in_channels: int = 1, out_channels: int = 1, ngf: int = 64,
                 n_blocks: int = 9, norm: str = "instance", dropout: bool = False):
        super().__init__()
        bias = conv_bias(norm)
        layers: list[nn.Module] = [nn.ReflectionPad2d(3),
                                   nn.Conv2d(in_channels, ngf, 7, bias=bias),
                                   norm_layer(norm, ngf), nn.ReLU(True)]
        channels = ngf
        for _ in range(2):  # downsample x4
            layers += [nn.Conv2d(channels, channels * 2, 3, stride=2, padding=1, bias=bias),
                       norm_layer(norm, channels * 2), nn.ReLU(True)]
            channels *= 2
        layers += [ResnetBlock(channels, norm, dropout) for _ in range(n_blocks)]
        for _ in range(2):  # back up to full size
            layers += [nn.ConvTranspose2d(channels, channels // 2, 3, stride=2, padding=1,
                                          output_padding=1, bias=bias),
                       norm_layer(norm, channels // 2), nn.ReLU(True)]
            channels //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(channels, out_channels, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PatchCritic(nn.Module):
    """PatchGAN discriminator: outputs raw logits (the loss decides LSGAN or BCE)."""

    def __init__(self, in_channels: int = 1, ndf: int = 64, n_layers: int = 3,
                 norm: str = "instance"):
        super().__init__()
        bias = conv_bias(norm)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1),
                                   nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1  # the last hidden layer keeps the resolution
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1, bias=bias),
                       norm_layer(norm, ndf * mult), nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class UnetBlock(nn.Module):
    """One level of the U-Net: down, the inner levels, up; the input is skipped across.

    outer_nc: channels this level receives and returns (before the skip concat);
    inner_nc: channels after its down conv.
    """

    def __init__(self, outer_nc: int, inner_nc: int, inner: nn.Module | None, norm: str,
                 dropout: bool = False, in_channels: int | None = None,
                 outermost: bool = False):
        super().__init__()
        bias = conv_bias(norm)
        in_channels = outer_nc if in_channels is None else in_channels
        down_conv = nn.Conv2d(in_channels, inner_nc, 4, stride=2, padding=1, bias=bias)
        up_in = inner_nc if inner is None else inner_nc * 2  # innermost has no skip below it
        self.outermost = outermost
        if outermost:
            down = [down_conv]
            up = [nn.ReLU(True), nn.ConvTranspose2d(up_in, outer_nc, 4, stride=2, padding=1),
                  nn.Tanh()]
        elif inner is None:  # innermost: 1x1 bottleneck, no norm on it
            down = [nn.LeakyReLU(0.2, True), down_conv]
            up = [nn.ReLU(True),
                  nn.ConvTranspose2d(up_in, outer_nc, 4, stride=2, padding=1, bias=bias),
                  norm_layer(norm, outer_nc)]
        else:
            down = [nn.LeakyReLU(0.2, True), down_conv, norm_layer(norm, inner_nc)]
            up = [nn.ReLU(True),
                  nn.ConvTranspose2d(up_in, outer_nc, 4, stride=2, padding=1, bias=bias),
                  norm_layer(norm, outer_nc)]
            if dropout:
                up.append(nn.Dropout(0.5))
        middle = [] if inner is None else [inner]
        self.body = nn.Sequential(*down, *middle, *up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outermost:
            return self.body(x)
        return torch.cat([x, self.body(x)], dim=1)


class UnetGenerator(nn.Module):
    """unet_256 with `downs=8`: a 256x256 input reaches 1x1 at the bottleneck."""

    def __init__(self, in_channels: int = 1, out_channels: int = 1, downs: int = 8,
                 ngf: int = 64, norm: str = "batch", dropout: bool = True):
        super().__init__()
        if downs < 5:
            raise ValueError("a U-Net needs at least 5 downsampling levels")
        self.downs = downs
        block = UnetBlock(ngf * 8, ngf * 8, None, norm)
        for _ in range(downs - 5):  # the extra 8x-wide levels carry the dropout
            block = UnetBlock(ngf * 8, ngf * 8, block, norm, dropout=dropout)
        block = UnetBlock(ngf * 4, ngf * 8, block, norm)
        block = UnetBlock(ngf * 2, ngf * 4, block, norm)
        block = UnetBlock(ngf, ngf * 2, block, norm)
        self.net = UnetBlock(out_channels, ngf, block, norm, in_channels=in_channels,
                             outermost=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = 2 ** self.downs
        if x.shape[-1] % size or x.shape[-2] % size:
            raise ValueError(f"U-Net with {self.downs} downs needs sides divisible by {size}, "
                             f"got {tuple(x.shape[-2:])}")
        return self.net(x)


def init_weights(module: nn.Module, std: float = 0.02) -> nn.Module:
    """The reference initialisation: conv weights N(0, std), biases 0, norm scales N(1, std)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, std)
            nn.init.zeros_(m.bias)
    return module


def _resolved(config: dict) -> dict:
    from train.config import TrainConfig

    return TrainConfig.from_dict(config).resolved().to_dict()


def build_generator(config: dict) -> nn.Module:
    """The bass->drums generator described by a config dict (a checkpoint's config.json)."""
    c = _resolved(config)
    if c["model"] == "cyclegan":
        net = ResnetGenerator(1, 1, c["ngf"], c["n_blocks"], c["norm"], c["dropout"])
    else:
        net = UnetGenerator(1, 1, c["unet_downs"], c["ngf"], c["norm"], c["dropout"])
    return init_weights(net)


def build_critic(config: dict) -> nn.Module:
    """A PatchGAN critic; Pix2Pix's sees (bass, drums) stacked as two channels."""
    c = _resolved(config)
    in_channels = 1 if c["model"] == "cyclegan" else 2
    return init_weights(PatchCritic(in_channels, c["ndf"], c["n_layers_d"], c["norm"]))


def build_networks(config: dict) -> dict[str, nn.Module]:
    """Every network the model trains, by its checkpoint key."""
    c = _resolved(config)
    if c["model"] == "cyclegan":
        return {
            "gen_bass_to_drums": build_generator(c),
            "gen_drums_to_bass": build_generator(c),
            "critic_bass": build_critic(c),
            "critic_drums": build_critic(c),
        }
    return {"gen_bass_to_drums": build_generator(c), "critic_drums": build_critic(c)}


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
