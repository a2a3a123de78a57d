"""ResNet18 as torchvision builds it, without importing torchvision.

Importing torchvision costs a process ~164 MiB of RSS (its compiled operators, CUDA kernels included,
and its Python packages: datasets, io, transforms), none of which embedding or training uses: the
preprocessing is ours (``embedding.preprocess``). This module builds the same network from
``torch.nn``, module for module in torchvision's order, so that

  * a torchvision state dict (the ImageNet weights, a tuned model's ``weights.pt``) loads with the same
    keys, and the same weights give the same vectors;
  * ``torch.manual_seed(s)`` followed by ``resnet18()`` draws the same random weights as
    ``torchvision.models.resnet18(weights=None)`` (the same modules are created, and initialised, in the
    same order).

``core/test_resnet.py`` checks both against torchvision itself. Adapted from torchvision's
``models/resnet.py`` (BSD-3-Clause), limited to what ResNet18 uses (BasicBlock, no groups or dilation).

torch is imported by the caller's first call (``resnet18``), never at this module's import.
"""

from __future__ import annotations


def resnet18(num_classes: int = 1000):
    """torchvision's ``resnet18(weights=None)``: BasicBlock, layers [2, 2, 2, 2]."""
    import torch  # deferred: heavy
    from torch import nn  # deferred: heavy

    class BasicBlock(nn.Module):
        def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample=None):
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.downsample = downsample
            self.stride = stride

        def forward(self, x):
            identity = x
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            if self.downsample is not None:
                identity = self.downsample(x)
            out += identity
            return self.relu(out)

    class ResNet(nn.Module):
        def __init__(self, layers: tuple[int, ...] = (2, 2, 2, 2)):
            super().__init__()
            self.inplanes = 64
            self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
            self.layer1 = self._make_layer(64, layers[0])
            self.layer2 = self._make_layer(128, layers[1], stride=2)
            self.layer3 = self._make_layer(256, layers[2], stride=2)
            self.layer4 = self._make_layer(512, layers[3], stride=2)
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(512, num_classes)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.constant_(m.weight, 1)
                    nn.init.constant_(m.bias, 0)

        def _make_layer(self, planes: int, blocks: int, stride: int = 1):
            downsample = None
            if stride != 1 or self.inplanes != planes:
                downsample = nn.Sequential(
                    nn.Conv2d(self.inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
                )
            layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
            self.inplanes = planes
            layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
            return nn.Sequential(*layers)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    return ResNet()
