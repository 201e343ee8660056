"""Small image classifiers for the vision recipes: a CPU-friendly CNN and a CIFAR-style ResNet-18.

Both take float images ``(B, in_channels, H, W)`` and return logits ``(B, num_classes)``.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["BasicBlock", "ResNet", "SmallCNN", "resnet18"]


class SmallCNN(nn.Module):
    """Two 3x3 convolutions (16 and 32 channels) with ReLU and 2x2 max-pooling, then one linear layer.

    Fast on a CPU (about 1 million multiply-adds per 28 x 28 image, 20,490 parameters with 10 classes);
    adaptive pooling to 7 x 7 makes it accept any input size of at least 4 x 4.

    Args:
        num_classes: number of outputs.
        in_channels: channels of the input images (1 for MNIST-like, 3 for RGB).

    Example:
        >>> import torch
        >>> model = SmallCNN(num_classes=10, in_channels=1)
        >>> model(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        _check_sizes(num_classes, in_channels)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(7),
        )
        self.classifier = nn.Linear(32 * 7 * 7, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        """Logits ``(B, num_classes)`` for images ``(B, in_channels, H, W)``."""
        features: Tensor = self.features(images)
        logits: Tensor = self.classifier(features.flatten(1))
        return logits


class BasicBlock(nn.Module):
    """The two-convolution residual block of He et al. (2016), with a 1x1 projection on the shortcut.

    Args:
        in_channels: channels of the input.
        channels: channels of the output.
        stride: stride of the first convolution (2 halves the spatial size).
    """

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        """``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))``."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual: Tensor = self.shortcut(x)
        result: Tensor = self.relu(out + residual)
        return result


class ResNet(nn.Module):
    """A ResNet for small images: 3x3 stem with stride 1 and no max-pool, four stages, global average pool.

    Args:
        blocks_per_stage: number of `BasicBlock` in each of the four stages (64, 128, 256, 512 channels).
        num_classes: number of outputs.
        in_channels: channels of the input images.
    """

    def __init__(self, blocks_per_stage: tuple[int, int, int, int], num_classes: int, in_channels: int) -> None:
        super().__init__()
        _check_sizes(num_classes, in_channels)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
        )
        stages: list[nn.Module] = []
        channels_in = 64
        for stage, (channels, blocks) in enumerate(zip((64, 128, 256, 512), blocks_per_stage, strict=True)):
            for block in range(blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                stages.append(BasicBlock(channels_in, channels, stride))
                channels_in = channels
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels_in, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, images: Tensor) -> Tensor:
        """Logits ``(B, num_classes)`` for images ``(B, in_channels, H, W)``."""
        features: Tensor = self.pool(self.stages(self.stem(images)))
        logits: Tensor = self.fc(features.flatten(1))
        return logits


def resnet18(num_classes: int = 10, in_channels: int = 3) -> ResNet:
    """ResNet-18 (He et al. 2016) in its CIFAR form: a 3x3 stem, no max-pool, 2-2-2-2 `BasicBlock` stages.

    Args:
        num_classes: number of outputs.
        in_channels: channels of the input images.

    Returns:
        The model, about 11.2 million parameters with 10 classes.

    Example:
        >>> import torch
        >>> model = resnet18(num_classes=10)
        >>> model(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    return ResNet((2, 2, 2, 2), num_classes=num_classes, in_channels=in_channels)


def _check_sizes(num_classes: int, in_channels: int) -> None:
    if num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}.")
    if in_channels < 1:
        raise ValueError(f"in_channels must be a positive integer, got {in_channels!r}.")
