#!/usr/bin/env python3
"""Write fixtures/import/: small PyTorch checkpoints for `host-trainer import`, made ONCE by
PyTorch and committed (CI reads them without PyTorch: host-trainer/tests/cli/import.rs).

    pip install torch numpy        # CPU is enough; only this script needs them
    python3 scripts/make_import_fixtures.py [--out fixtures/import]

Files:
  resnet18-torchvision.pth   a torchvision-layout ResNet-18 state dict (ImageNet stem: 7x7
                             conv1 stride 2 + max pool) at width 1/64 (1/2/4/8 channels),
                             with its 10-class `fc`
  moco-v2.pth.tar            a MoCo-v2 training checkpoint ({'epoch', 'arch', 'state_dict',
                             'optimizer'}; state_dict keys `module.encoder_q.*`,
                             `module.encoder_k.*`, `module.queue`, `module.queue_ptr`; the
                             encoders end in the v2 MLP head fc.0/fc.2) of a ResNet-18 with the
                             small 3x3 stem, width 1/64
  expected.json              for each: the detected config we expect and the pooled features
                             (eval mode) PyTorch computes for the fixed image below

The weights and BN statistics are random (seeded), not trained: the test is about reading the
layout and computing the same function, and non-trivial BN statistics make eval-mode BN count.
The fixed image, 32x32 RGB, is p[c][y][x] = ((7x + 13y + 29c) mod 256) / 255, normalised with
the ImageNet mean/std.
"""
import argparse
import json
import os

import torch
import torch.nn as nn

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


class BasicBlock(nn.Module):
    """torchvision.models.resnet.BasicBlock, same attribute names."""

    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + idt)


class ResNet18(nn.Module):
    """torchvision.models.resnet18's module tree (so its state_dict keys), widths scaled."""

    def __init__(self, width=1 / 64, small_stem=False, fc=None):
        super().__init__()
        w = [max(1, round(64 * width * m)) for m in (1, 2, 4, 8)]
        if small_stem:
            self.conv1 = nn.Conv2d(3, w[0], 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(3, w[0], 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.bn1 = nn.BatchNorm2d(w[0])
        self.relu = nn.ReLU(inplace=True)
        layers, inp = [], w[0]
        for i, p in enumerate(w):
            s = 1 if i == 0 else 2
            layers.append(nn.Sequential(BasicBlock(inp, p, s), BasicBlock(p, p, 1)))
            inp = p
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = fc if fc is not None else nn.Linear(w[3], 10)
        self.feature_dim = w[3]

    def features(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


def randomise(m, g):
    """Random weights and BN statistics (so eval-mode BN is not the identity)."""
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.Conv2d):
                fan = mod.weight[0].numel()
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) * (2.0 / fan) ** 0.5)
            elif isinstance(mod, nn.BatchNorm2d):
                n = mod.num_features
                mod.weight.copy_(0.5 + torch.rand(n, generator=g))
                mod.bias.copy_(0.2 * torch.randn(n, generator=g))
                mod.running_mean.copy_(0.3 * torch.randn(n, generator=g))
                mod.running_var.copy_(0.5 + torch.rand(n, generator=g))
                mod.num_batches_tracked.fill_(17)
            elif isinstance(mod, nn.Linear):
                mod.weight.copy_(0.1 * torch.randn(mod.weight.shape, generator=g))
                mod.bias.copy_(0.1 * torch.randn(mod.bias.shape, generator=g))


def fixed_image(size=32):
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    img = torch.stack([((7 * x + 13 * y + 29 * c) % 256).float() / 255.0 for c in range(3)])
    m = torch.tensor(MEAN).view(3, 1, 1)
    s = torch.tensor(STD).view(3, 1, 1)
    return ((img - m) / s).unsqueeze(0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="fixtures/import")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(2021)
    x = fixed_image(32)
    expected = {
        "image": "32x32 RGB p[c][y][x] = ((7x + 13y + 29c) mod 256) / 255, normalised (p - mean)/std",
        "mean": MEAN,
        "std": STD,
        "torch": torch.__version__,
        "models": {},
    }

    # 1. torchvision layout, ImageNet stem, plain state dict (the fc classifier included).
    tv = ResNet18(width=1 / 64, small_stem=False)
    randomise(tv, g)
    tv.eval()
    torch.save(tv.state_dict(), os.path.join(a.out, "resnet18-torchvision.pth"))
    with torch.no_grad():
        f = tv.features(x)[0].tolist()
    expected["models"]["resnet18-torchvision.pth"] = {
        "arch": "resnet18", "width": 1 / 64, "small_stem": False, "prefix": "", "key": None,
        "features": f,
    }

    # 2. MoCo v2 checkpoint: query and key encoders with the MLP projection head, the queue.
    def moco_encoder():
        dim = 8
        head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 8))
        return ResNet18(width=1 / 64, small_stem=True, fc=head)

    class MoCo(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder_q = moco_encoder()
            self.encoder_k = moco_encoder()
            self.register_buffer("queue", torch.randn(8, 16, generator=g))
            self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    moco = nn.DataParallel(MoCo())  # the `module.` prefix, as MoCo's main_moco.py saves it
    randomise(moco.module.encoder_q, g)
    randomise(moco.module.encoder_k, g)
    opt = torch.optim.SGD(moco.parameters(), lr=0.03, momentum=0.9)
    ckpt = {
        "epoch": 200,
        "arch": "resnet18",
        "state_dict": moco.state_dict(),
        "optimizer": opt.state_dict(),
    }
    torch.save(ckpt, os.path.join(a.out, "moco-v2.pth.tar"))
    enc = moco.module.encoder_q.eval()
    with torch.no_grad():
        f = enc.features(x)[0].tolist()
    expected["models"]["moco-v2.pth.tar"] = {
        "arch": "resnet18", "width": 1 / 64, "small_stem": True,
        "prefix": "module.encoder_q.", "key": "state_dict",
        "features": f,
    }
    with open(os.path.join(a.out, "expected.json"), "w") as fh:
        json.dump(expected, fh, indent=1)
        fh.write("\n")
    for n in sorted(os.listdir(a.out)):
        print(n, os.path.getsize(os.path.join(a.out, n)), "bytes")


if __name__ == "__main__":
    main()
