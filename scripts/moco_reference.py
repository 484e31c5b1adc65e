#!/usr/bin/env python3
"""An independent MoCo-v2 in PyTorch, to tell a trainer bug from a property of the settings.

Written from the MoCo paper and its reference code (facebookresearch/moco, main_moco.py /
builder.py), not from host-trainer's code: ResNet-18 at a width multiplier with the small-image
stem (3x3 conv stride 1, no max-pool), MLP head C-C-128, key encoder by EMA, a K-entry queue,
InfoNCE at temperature tau, SGD (momentum 0.9, weight decay 1e-4) with a cosine lr, shuffle-BN
emulated on one device by splitting the batch into `--bn-groups` BN groups (query: consecutive
groups; key: the batch shuffled, encoded in groups, un-shuffled). Augmentations are torchvision's
MoCo-v2 ones (blur sigma scaled from 224 px to the image size, as the trainer does).

It also runs the trainer's queue-staleness probe: at the end of each epoch, a batch of the next
epoch's images is scored against the queue as training left it and against the same key views
re-encoded by the current key encoder (on copies, so nothing in the run changes).

Reads a mini-ImageNet-format folder (train.csv: filename,label; images/). Prints one JSON line per
epoch. Needs torch and torchvision (not installed by the project; not run by CI):

    python3 scripts/moco_reference.py --data DIR --width 0.125 --epochs 10
"""

import argparse
import copy
import csv
import json
import math
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.io import decode_image
from torchvision.transforms import v2 as T


class Block(nn.Module):
    def __init__(self, cin, cout, stride, groups):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = GroupBN(cout, groups)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = GroupBN(cout, groups)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), GroupBN(cout, groups))

    def forward(self, x):
        y = F.relu(self.b1(self.c1(x)))
        y = self.b2(self.c2(y))
        return F.relu(y + (x if self.down is None else self.down(x)))


class GroupBN(nn.BatchNorm2d):
    """BatchNorm whose training statistics are taken per group of consecutive samples, as
    `groups` GPUs of MoCo each normalise their own slice of the batch.

    The running statistics take one momentum step per forward, toward the mean of the groups'
    statistics, as MoCo's single-GPU `SplitBatchNorm` does (the mean over the groups of each
    group's own update; `num_batches_tracked` counts forwards, not groups). Calling the plain BN
    once per group instead would move them `groups` momentum steps per forward."""

    def __init__(self, c, groups):
        super().__init__(c)
        self.groups = groups

    def forward(self, x):
        if not self.training or self.groups == 1:
            return super().forward(x)
        outs, means, variances = [], [], []
        for c in x.chunk(self.groups):
            rm, rv = self.running_mean.clone(), self.running_var.clone()
            outs.append(F.batch_norm(c, rm, rv, self.weight, self.bias, True, self.momentum, self.eps))
            means.append(rm)
            variances.append(rv)
        with torch.no_grad():
            self.running_mean.copy_(torch.stack(means).mean(0))
            self.running_var.copy_(torch.stack(variances).mean(0))
            self.num_batches_tracked.add_(1)
        return torch.cat(outs)


class Encoder(nn.Module):
    def __init__(self, width, dim, groups):
        super().__init__()
        w = [max(1, round(64 * width * m)) for m in (1, 2, 4, 8)]
        self.stem = nn.Sequential(nn.Conv2d(3, w[0], 3, 1, 1, bias=False), GroupBN(w[0], groups), nn.ReLU())
        layers, cin = [], w[0]
        for i, c in enumerate(w):
            layers += [Block(cin, c, 1 if i == 0 else 2, groups), Block(c, c, 1, groups)]
            cin = c
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Sequential(nn.Linear(w[3], w[3]), nn.ReLU(), nn.Linear(w[3], dim))

    def features(self, x):
        return F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1).flatten(1)

    def forward(self, x):
        return self.fc(self.features(x))


def load_images(root, csv_name):
    with open(os.path.join(root, csv_name)) as f:
        rows = list(csv.DictReader(f))
    labels = sorted({r["label"] for r in rows})
    idx = {l: i for i, l in enumerate(labels)}
    imgs = torch.stack([decode_image(os.path.join(root, "images", r["filename"]))[:3] for r in rows])
    return imgs, torch.tensor([idx[r["label"]] for r in rows])


def v2_augment(size):
    s = size / 224.0
    return T.Compose([
        T.RandomResizedCrop(size, scale=(0.2, 1.0), antialias=True),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomApply([T.GaussianBlur(2 * math.ceil(3 * 2.0 * s) + 1, (0.1 * s, 2.0 * s))], p=0.5),
        T.RandomHorizontalFlip(),
        T.ToDtype(torch.float32, scale=True),
        T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])


def keys_of(enc_k, x, groups):
    perm = torch.randperm(x.shape[0])
    k = enc_k(x[perm])
    out = torch.empty_like(k)
    out[perm] = k
    return F.normalize(out, dim=1)


def info_nce(q, k, queue, tau):
    q = F.normalize(q, dim=1)
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.t()], 1) / tau
    target = torch.zeros(q.shape[0], dtype=torch.long)
    return F.cross_entropy(logits, target), (logits.argmax(1) == 0).float().mean().item()


def knn_top1(enc, train_x, train_y, test_x, test_y, k=20, t=0.07):
    enc.eval()
    with torch.no_grad():
        f_tr = F.normalize(enc.features(train_x), dim=1)
        f_te = F.normalize(enc.features(test_x), dim=1)
    enc.train()
    sim = f_te @ f_tr.t()
    w, i = sim.topk(k, dim=1)
    votes = torch.zeros(test_x.shape[0], int(train_y.max()) + 1)
    votes.scatter_add_(1, train_y[i], (w / t).exp())
    return (votes.argmax(1) == test_y).float().mean().item() * 100


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--width", type=float, default=0.125)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.03)
    p.add_argument("--queue", type=int, default=1024)
    p.add_argument("--m", type=float, default=0.99)
    p.add_argument("--tau", type=float, default=0.2)
    p.add_argument("--bn-groups", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)

    imgs, labels = load_images(a.data, "train.csv")
    # Hold out 10 % of each class for the kNN monitor, as the trainer does.
    held = torch.zeros(len(labels), dtype=torch.bool)
    for c in labels.unique():
        ix = (labels == c).nonzero().flatten()
        held[ix[-max(1, len(ix) // 10):]] = True
    train_imgs, train_labels = imgs[~held], labels[~held]
    knn_sel = held.nonzero().flatten()[torch.randperm(int(held.sum()))[:200]]
    eval_tf = T.Compose([T.Resize(a.size, antialias=True), T.ToDtype(torch.float32, scale=True),
                         T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    knn_train_x = torch.stack([eval_tf(x) for x in train_imgs])
    knn_test_x = torch.stack([eval_tf(imgs[i]) for i in knn_sel])
    aug = v2_augment(a.size)

    enc_q = Encoder(a.width, 128, a.bn_groups)
    enc_k = copy.deepcopy(enc_q)
    for pk in enc_k.parameters():
        pk.requires_grad = False
    opt = torch.optim.SGD(enc_q.parameters(), lr=a.lr, momentum=0.9, weight_decay=1e-4)
    queue = F.normalize(torch.randn(a.queue, 128), dim=1)
    queue_views = None  # the key views whose keys fill the queue (for the probe)
    ptr = 0
    n = len(train_imgs)
    steps = n // a.batch
    total = steps * a.epochs
    print(json.dumps({"epoch": -1, "knn_top1": knn_top1(enc_q, knn_train_x, train_labels, knn_test_x, labels[knn_sel])}), flush=True)
    for epoch in range(a.epochs):
        perm = torch.randperm(n)
        t0, losses, accs = time.time(), [], []
        for s in range(steps):
            lr = a.lr * 0.5 * (1 + math.cos(math.pi * (epoch * steps + s) / total))
            for g in opt.param_groups:
                g["lr"] = lr
            idx = perm[s * a.batch:(s + 1) * a.batch]
            xq = torch.stack([aug(train_imgs[i]) for i in idx])
            xk = torch.stack([aug(train_imgs[i]) for i in idx])
            q = enc_q(xq)
            with torch.no_grad():
                for pq, pk in zip(enc_q.parameters(), enc_k.parameters()):
                    pk.mul_(a.m).add_(pq.detach(), alpha=1 - a.m)
                k = keys_of(enc_k, xk, a.bn_groups)
            loss, acc = info_nce(q, k, queue, a.tau)
            opt.zero_grad()
            loss.backward()
            opt.step()
            queue[ptr:ptr + a.batch] = k
            if queue_views is None:
                queue_views = torch.zeros((a.queue,) + xk.shape[1:])
            queue_views[ptr:ptr + a.batch] = xk
            ptr = (ptr + a.batch) % a.queue
            losses.append(loss.item())
            accs.append(acc)
        # The probe: one batch of fresh views against the training queue and the re-encoded one.
        idx = torch.randperm(n)[:a.batch]
        with torch.no_grad():
            probe_q, probe_k = copy.deepcopy(enc_q), copy.deepcopy(enc_k)
            xq = torch.stack([aug(train_imgs[i]) for i in idx])
            xk = torch.stack([aug(train_imgs[i]) for i in idx])
            q = probe_q(xq)
            k = keys_of(probe_k, xk, a.bn_groups)
            fresh = torch.cat([keys_of(probe_k, queue_views[i:i + a.batch], a.bn_groups)
                               for i in range(0, a.queue, a.batch)])
            l_stale, a_stale = info_nce(q, k, queue, a.tau)
            l_fresh, a_fresh = info_nce(q, k, fresh, a.tau)
        print(json.dumps({
            "epoch": epoch, "loss": sum(losses) / len(losses), "instance_top1": 100 * sum(accs) / len(accs),
            "lr_end": lr, "probe_loss_stale": l_stale.item(), "probe_loss_fresh": l_fresh.item(),
            "probe_top1_stale": 100 * a_stale, "probe_top1_fresh": 100 * a_fresh,
            "chance": math.log(a.queue + 1),
            "knn_top1": knn_top1(enc_q, knn_train_x, train_labels, knn_test_x, labels[knn_sel]),
            "img_per_sec": steps * a.batch / (time.time() - t0),
        }), flush=True)


if __name__ == "__main__":
    main()
