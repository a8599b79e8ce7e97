"""The ResNet family of He et al. (2015): one generic network, configured by a table.

Parameter names and layout follow torchvision (``conv1``, ``bn1``, ``layer1`` … ``fc``, blocks with
``conv1``/``bn1``/…/``downsample``) so torchvision and timm state dicts load with ``strict=True``.

Options that the paper studies:

* ``shortcut``: ``"A"`` identity with zero-padded extra channels (parameter-free, stride-2
  subsampling), ``"B"`` projection only where dimensions change, ``"C"`` projection in every block,
  ``"none"`` a plain network (no shortcuts at all).
* ``stride_in_1x1``: the paper's bottleneck puts the stride-2 on the first 1×1 conv (Table 1's
  3.8/7.6/11.3 GFLOPs); torchvision ("v1.5") puts it on the 3×3, the default here.
* ``zero_init_residual``: zero the last BN of each residual branch (Goyal et al.); off, as in the paper.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

ShortcutOption = Literal["A", "B", "C", "none"]
SHORTCUT_OPTIONS: tuple[str, ...] = ("A", "B", "C", "none")


@dataclass(frozen=True)
class FeatureSpec:
    """One stage output: its module name, channel count and stride relative to the input."""

    name: str
    channels: int
    stride: int


class ZeroPadShortcut(nn.Module):
    """Option A: identity, subsampled by striding, with zero channels appended. No parameters."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"option A cannot reduce channels ({in_channels} -> {out_channels})")
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        extra = self.out_channels - self.in_channels
        if extra:
            x = F.pad(x, (0, 0, 0, 0, 0, extra))
        return x

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


def make_shortcut(option: str, in_channels: int, out_channels: int, stride: int) -> nn.Module | None:
    """The module on the shortcut path, or None for a plain identity (or no shortcut at all)."""
    changes_shape = stride != 1 or in_channels != out_channels
    if option == "none":
        return None
    if option == "A":
        return ZeroPadShortcut(in_channels, out_channels, stride) if changes_shape else None
    if option == "B" and not changes_shape:
        return None
    if option in ("B", "C"):
        return nn.Sequential(conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))
    raise ValueError(f"shortcut must be one of {SHORTCUT_OPTIONS}, got {option!r}")


class BasicBlock(nn.Module):
    """Two 3×3 convs (Fig. 5 left). ReLU after the addition (Eq. 1)."""

    expansion = 1

    def __init__(
        self,
        in_channels: int,
        width: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        residual: bool = True,
        stride_in_1x1: bool = False,  # no 1×1 here; accepted so one stage builder serves both blocks
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, width, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(width, width)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = downsample
        self.residual = residual

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3, 1×1 restore (×4) (Fig. 5 right)."""

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        width: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        residual: bool = True,
        stride_in_1x1: bool = False,
    ) -> None:
        super().__init__()
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = conv1x1(in_channels, width, stride_1x1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride_3x3)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, width * self.expansion)
        self.bn3 = nn.BatchNorm2d(width * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.residual = residual

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


Block = type[BasicBlock] | type[Bottleneck]


def make_stage(
    block: Block,
    in_channels: int,
    width: int,
    num_blocks: int,
    stride: int,
    shortcut: str,
    stride_in_1x1: bool = False,
) -> nn.Sequential:
    """``num_blocks`` blocks; the first one changes stride/channels (conv3_1, conv4_1, conv5_1)."""
    blocks = []
    out_channels = width * block.expansion
    for index in range(num_blocks):
        block_in = in_channels if index == 0 else out_channels
        block_stride = stride if index == 0 else 1
        blocks.append(
            block(
                block_in,
                width,
                block_stride,
                downsample=make_shortcut(shortcut, block_in, out_channels, block_stride),
                residual=shortcut != "none",
                stride_in_1x1=stride_in_1x1,
            )
        )
    return nn.Sequential(*blocks)


class ResNet(nn.Module):
    """A residual (or plain) network: stem, stages ``layer1``…``layerN``, global average pool, fc.

    ``stem="imagenet"`` is Table 1's 7×7/2 conv + 3×3/2 max pool; ``stem="cifar"`` is §4.2's single
    3×3 conv with no pooling.
    """

    def __init__(
        self,
        block: Block,
        layers: Sequence[int],
        widths: Sequence[int],
        *,
        stem: Literal["imagenet", "cifar"] = "imagenet",
        shortcut: ShortcutOption = "B",
        stride_in_1x1: bool = False,
        zero_init_residual: bool = False,
        in_chans: int = 3,
        num_classes: int = 1000,
        name: str = "resnet",
    ) -> None:
        super().__init__()
        if shortcut not in SHORTCUT_OPTIONS:
            raise ValueError(f"shortcut must be one of {SHORTCUT_OPTIONS}, got {shortcut!r}")
        if len(layers) != len(widths) or not layers:
            raise ValueError(f"layers {list(layers)} and widths {list(widths)} must be non-empty and equally long")
        if zero_init_residual and shortcut == "none":
            raise ValueError("zero_init_residual=True would zero every block of a plain network (shortcut='none')")
        if in_chans < 1 or num_classes < 1:
            raise ValueError(f"in_chans and num_classes must be positive, got {in_chans} and {num_classes}")
        self.name = name
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.config = dict(
            block=block.__name__, layers=list(layers), widths=list(widths), stem=stem, shortcut=shortcut,
            stride_in_1x1=stride_in_1x1, zero_init_residual=zero_init_residual,
            in_chans=in_chans, num_classes=num_classes,
        )  # fmt: skip

        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}")
        # Registration order is execution order: torchvision's IntermediateLayerGetter relies on it.
        stem_width = widths[0]
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_chans, stem_width, 7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = conv3x3(in_chans, stem_width)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1) if stem == "imagenet" else nn.Identity()
        stride = 4 if stem == "imagenet" else 1

        self.feature_info: list[FeatureSpec] = []
        channels = stem_width
        for index, (num_blocks, width) in enumerate(zip(layers, widths)):
            stage_stride = 1 if index == 0 else 2
            stride *= stage_stride
            stage = make_stage(block, channels, width, num_blocks, stage_stride, shortcut, stride_in_1x1)
            channels = width * block.expansion
            name_ = f"layer{index + 1}"
            self.add_module(name_, stage)
            self.feature_info.append(FeatureSpec(name_, channels, stride))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):  # He et al. 2015 ("[13]" in the paper)
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(module.last_bn.weight)

    @property
    def stage_names(self) -> list[str]:
        return [spec.name for spec in self.feature_info]

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a clear error for a batch this network cannot take."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{self.name} expects a torch.Tensor batch (N, C, H, W), got {type(x).__name__}")
        if x.dim() != 4:
            hint = "; add a batch dimension with x.unsqueeze(0)" if x.dim() == 3 else ""
            raise ValueError(
                f"{self.name} expects a 4-D batch (N, C, H, W), got a {x.dim()}-D tensor of shape "
                f"{tuple(x.shape)}{hint}"
            )
        if x.shape[1] != self.in_chans:
            raise ValueError(
                f"{self.name} expects {self.in_chans} input channel(s), got {x.shape[1]} "
                f"(input shape {tuple(x.shape)}); build it with in_chans={x.shape[1]} or convert the images"
            )

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward_features(self, x: torch.Tensor, stages: Sequence[str] | None = None) -> OrderedDict[str, torch.Tensor]:
        """Stage outputs by name (all stages by default), computing only as far as needed."""
        self.check_input(x)
        wanted = list(self.stage_names if stages is None else stages)
        unknown = [s for s in wanted if s not in self.stage_names]
        if unknown:
            raise ValueError(f"{self.name} has stages {self.stage_names}; unknown {unknown}")
        last = max(self.stage_names.index(s) for s in wanted)
        outputs: OrderedDict[str, torch.Tensor] = OrderedDict()
        x = self.stem(x)
        for name in self.stage_names[: last + 1]:
            x = getattr(self, name)(x)
            if name in wanted:
                outputs[name] = x
        return outputs

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.stem(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return self.forward_head(x)


IMAGENET_WIDTHS = (64, 128, 256, 512)
CIFAR_WIDTHS = (16, 32, 64)

# Table 1: depth -> (block, blocks per stage)
IMAGENET_DEPTHS: dict[int, tuple[Block, tuple[int, ...]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


def imagenet_resnet(depth: int, *, shortcut: ShortcutOption = "B", name: str | None = None, **kwargs) -> ResNet:
    """A Table 1 network; ``shortcut="none"`` gives the plain net of the same depth."""
    if depth not in IMAGENET_DEPTHS:
        raise ValueError(f"ImageNet ResNet depth must be one of {sorted(IMAGENET_DEPTHS)}, got {depth}")
    block, layers = IMAGENET_DEPTHS[depth]
    kwargs.setdefault("num_classes", 1000)
    return ResNet(block, layers, IMAGENET_WIDTHS, stem="imagenet", shortcut=shortcut,
                  name=name or f"resnet{depth}", **kwargs)  # fmt: skip


def cifar_resnet(depth: int, *, shortcut: ShortcutOption = "A", name: str | None = None, **kwargs) -> ResNet:
    """§4.2: 6n+2 layers, n blocks per stage at 32/16/8 with 16/32/64 filters, option A."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110, 1202, ...), got {depth}")
    n = (depth - 2) // 6
    kwargs.setdefault("num_classes", 10)
    return ResNet(BasicBlock, (n, n, n), CIFAR_WIDTHS, stem="cifar", shortcut=shortcut,
                  name=name or f"resnet{depth}", **kwargs)  # fmt: skip


def count_weighted_layers(model: nn.Module) -> int:
    """Convs and fc layers on the main path, as the paper counts depth (projection shortcuts excluded)."""
    count = 0
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)) and ".downsample." not in f".{name}.":
            count += 1
    return count
