#!/usr/bin/env python3
"""Golden files for the trainer's step-parity test against PyTorch (issue #30 part 1).

Runs 20 training steps of MoCo-v2, Exemplar-v2 and supervised pretraining in PyTorch with the
independent model of `scripts/moco_reference.py` (ResNet-18 at a width multiplier, small-image
stem, MLP head, EMA key encoder, queue, InfoNCE, SGD with momentum and weight decay, shuffle-BN
emulated by BN groups) and writes, per method, one safetensors file that
`trainer/tests/it/step_parity.rs` replays through the trainer's own step.

One direction: everything starts here. The file holds the initial state (PyTorch's own
initialisation, under the trainer's checkpoint names: `init.encoder_q.conv1.weight`, ...,
`init.head_q.fc.0.weight`, `init.queue`, `init.queue_labels`, `init.queue_ptr`; the key side
starts as a copy of the query side, as in MoCo, so it is not stored), every step's labels
(`batch.labels` [20, B]) and shuffle permutation (`batch.perm` [20, B], `shuffled[i] =
x[perm[i]]`), and what each step produced:

* `loss` [20] (f64 of PyTorch's f32 loss);
* per-step summaries (computed in f64, stored f32) `sum.grad` [20, P, 4] (the query side's gradients, before weight
  decay), `sum.state` [20, S, 4] after the step (query side after SGD, key side after the EMA
  update and the key forward, so BN running statistics included; the queue after the enqueue),
  and `sum.keys` [20, 1, 4] (the enqueued keys), their tensors' names in the metadata's
  `config.summaries`. A summary is [‖x‖₂, r₁·x, r₂·x, r₃·x] with r_j the fixed pseudo-random
  vectors `hash_uniform(0x200 + j, n)`, n the tensor's element count;
* full tensors: the first step's gradients and keys (`full.0.grad.<param>`, `full.0.keys.keys`)
  and the integer state after the first and the last step (`full.0.state.<name>`,
  `full.19.state.<name>`: BN's num_batches_tracked, queue_labels, queue_ptr).

The input views are not stored (20 steps x 2 views would be megabytes): both sides compute them
from `hash_uniform`, a splitmix64 counter hash whose values `v·2⁻²² − 2` (v the top 24 bits) are
exact in f32, uniform in [−2, 2): view v of step s is `0.5·hash_uniform(0x100 + 2s + v, B·3·S·S)`
plus a per-(image, channel) offset `hash_uniform(0x300 + s, B·3)` shared by the two views (f32
arithmetic, one rounding). The Rust test has the same few lines.

BN groups are contiguous and their running statistics take one momentum step per forward toward
the groups' mean statistics (MoCo's `SplitBatchNorm`; see `GroupBN` in moco_reference.py).

Settings (tiny, so the files stay small and the test fast): width 1/32 (stage widths 2/4/8/16),
16x16 inputs, batch 16, 8 BN groups, K 64, dim 128, SGD lr 0.05, momentum 0.9, weight decay 1e-3
(ten times MoCo's, so that a wrong decay shows above float rounding), EMA m 0.9 (so the key side
moves visibly in 20 steps), tau 0.2 (MoCo-v2) and 0.1 (Exemplar-v2), 4 classes for Exemplar (each
query masks about a quarter of the queue; the initial queue carries labels in -1..3, so the mask
acts from step 1), 10 classes for supervised (one BN group, as the trainer trains it).

Needs torch, torchvision (moco_reference imports it) and numpy; CPU, float32, 1 thread:

    python3 scripts/step_parity_golden.py --out fixtures/parity
"""

import argparse
import copy
import json
import os
import struct
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from moco_reference import Encoder  # noqa: E402

STEPS = 20
FULL_STEPS = (0, STEPS - 1)
M64 = (1 << 64) - 1


def hash_uniform(stream, n):
    """n values in [-2, 2), exact in f32: splitmix64's finaliser of (stream << 32) + i + 1, top
    24 bits v, value v * 2^-22 - 2."""
    z = (np.uint64(stream) << np.uint64(32)) + np.arange(n, dtype=np.uint64) + np.uint64(1)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    v = (z >> np.uint64(40)).astype(np.float64)
    return (v * 2.0**-22 - 2.0).astype(np.float32)


def view(step, v, b, s):
    """View v of step `step`: per-pixel noise 0.5·u plus a per-(image, channel) offset shared by
    the step's two views, so that an image's two views are related as augmentations are (its
    positive is more alike than the other keys) and the images differ from one another."""
    noise = hash_uniform(0x100 + 2 * step + v, b * 3 * s * s).reshape(b, 3, s, s)
    base = hash_uniform(0x300 + step, b * 3 * 16).reshape(b, 3, 4, 1, 4, 1)
    base = np.broadcast_to(base, (b, 3, 4, s // 4, 4, s // 4)).reshape(b, 3, s, s)
    return torch.from_numpy(np.float32(0.5) * noise + base)


def summary(t):
    x = t.detach().double().flatten()
    out = [x.norm().item()]
    for j in range(3):
        r = torch.from_numpy(hash_uniform(0x200 + j, x.numel())).double()
        out.append((r * x).sum().item())
    return out


def torchvision_name(n):
    """moco_reference's module names -> the trainer's (torchvision's) names."""
    parts = n.split(".")
    if parts[0] == "stem":
        return {"0": "conv1", "1": "bn1"}[parts[1]] + "." + ".".join(parts[2:])
    if parts[0] == "layers":
        i = int(parts[1])
        rest = parts[2:]
        sub = {"c1": "conv1", "b1": "bn1", "c2": "conv2", "b2": "bn2"}
        if rest[0] == "down":
            head = "downsample." + rest[1]
            rest = rest[2:]
        else:
            head = sub[rest[0]]
            rest = rest[1:]
        return f"layer{i // 2 + 1}.{i % 2}.{head}." + ".".join(rest)
    raise ValueError(n)


def named_state(enc, prefix_enc, prefix_head):
    """Parameters and buffers of an Encoder under checkpoint names (`fc.*` is the contrastive
    head, or, for supervised, the encoder's own classifier)."""
    out = {}
    for n, t in list(enc.named_parameters()) + list(enc.named_buffers()):
        if n.startswith("fc."):
            out[(prefix_head or prefix_enc) + n] = t.detach().clone()
        else:
            out[prefix_enc + torchvision_name(n)] = t.detach().clone()
    return out


def named_params(enc, prefix_enc, prefix_head):
    return [((prefix_head or prefix_enc) + n if n.startswith("fc.") else prefix_enc + torchvision_name(n), p)
            for n, p in enc.named_parameters()]


def write_safetensors(path, tensors, metadata):
    dtypes = {torch.float32: "F32", torch.float64: "F64", torch.int64: "I64"}
    header, blobs, off = {"__metadata__": metadata}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        b = t.numpy().tobytes()
        header[name] = {"dtype": dtypes[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def run(method, a):
    torch.manual_seed({"moco-v2": 1, "exemplar-v2": 2, "supervised": 3}[method])
    contrastive = method != "supervised"
    groups = a.bn_groups if contrastive else 1
    tau = {"moco-v2": 0.2, "exemplar-v2": 0.1}.get(method)
    classes = 10 if method == "supervised" else 4
    enc_q = Encoder(a.width, a.dim, groups)
    if not contrastive:
        enc_q.fc = nn.Linear(enc_q.fc[0].in_features, classes)
    enc_q.to(a.dtype).train()
    hq = "head_q." if contrastive else None
    out = {f"init.{n}": t for n, t in named_state(enc_q, "encoder_q.", hq).items()}
    enc_k, queue, queue_labels = None, None, None
    if contrastive:
        enc_k = copy.deepcopy(enc_q)
        for p in enc_k.parameters():
            p.requires_grad = False
        queue = F.normalize(torch.randn(a.queue, a.dim), dim=1).to(a.dtype)
        queue_labels = torch.randint(-1, classes, (a.queue,)) if method == "exemplar-v2" \
            else torch.full((a.queue,), -1, dtype=torch.long)
        out["init.queue"] = queue.clone()
        out["init.queue_labels"] = queue_labels.clone()
        out["init.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    opt = torch.optim.SGD(enc_q.parameters(), lr=a.lr, momentum=0.9, weight_decay=a.wd)
    labels = torch.randint(0, classes, (STEPS, a.batch))
    perms = torch.stack([torch.randperm(a.batch) for _ in range(STEPS)])
    out["batch.labels"] = labels
    if contrastive:
        out["batch.perm"] = perms
    losses, sums = [], {}
    ptr = 0

    def record(kind, name, t, step, full=True):
        sums.setdefault(kind, {}).setdefault(name, []).append(summary(t))
        if full and step == 0:
            out[f"full.{step}.{kind}.{name}"] = t.detach().clone()

    for s in range(STEPS):
        xq = view(s, 0, a.batch, a.size).to(a.dtype)
        y = labels[s]
        if contrastive:
            xk = view(s, 1, a.batch, a.size).to(a.dtype)
            q = F.normalize(enc_q(xq), dim=1)
            with torch.no_grad():
                for pq, pk in zip(enc_q.parameters(), enc_k.parameters()):
                    pk.mul_(a.m).add_(pq.detach(), alpha=1 - a.m)
                perm = perms[s]
                kk = enc_k(xk[perm])
                k = torch.empty_like(kk)
                k[perm] = kk
                k = F.normalize(k, dim=1)
            l_pos = (q * k).sum(1, keepdim=True)
            l_neg = q @ queue.t()
            if method == "exemplar-v2":
                same = y[:, None] == queue_labels[None, :]
                l_neg = l_neg.masked_fill(same, float("-inf"))
            logits = torch.cat([l_pos, l_neg], 1) / tau
            loss = F.cross_entropy(logits, torch.zeros(a.batch, dtype=torch.long))
        else:
            loss = F.cross_entropy(enc_q(xq), y)
        opt.zero_grad()
        loss.backward()
        losses.append(loss.item())
        for n, p in named_params(enc_q, "encoder_q.", hq):
            record("grad", n, p.grad, s)
        opt.step()
        state = named_state(enc_q, "encoder_q.", hq)
        if contrastive:
            queue[ptr:ptr + a.batch] = k
            queue_labels[ptr:ptr + a.batch] = y
            ptr = (ptr + a.batch) % a.queue
            state.update(named_state(enc_k, "encoder_k.", "head_k."))
            state["queue"] = queue
            state["queue_labels"] = queue_labels
            state["queue_ptr"] = torch.tensor([ptr])
            record("keys", "keys", k, s)
        for n, t in state.items():
            # Float state in summaries only (the first step's is SGD on the stored gradients; by
            # the last, f32 rounding has moved small tensors too far for element-wise checks).
            full = False
            if t.dtype == torch.int64:
                if s in FULL_STEPS:
                    out[f"full.{s}.state.{n}"] = t.clone()
            else:
                record("state", n, t, s, full)
    out["loss"] = torch.tensor(losses, dtype=torch.float64)
    names = {}
    for kind, by_name in sums.items():
        names[kind] = sorted(by_name)
        # f32 is enough: each summary is compared to its own ~1e-5 at most.
        out[f"sum.{kind}"] = torch.tensor([[by_name[n][s] for n in names[kind]] for s in range(STEPS)],
                                          dtype=torch.float64).float()
    cfg = {"method": method, "width": a.width, "image_size": a.size, "batch": a.batch,
           "bn_groups": groups, "queue": a.queue, "dim": a.dim, "lr": a.lr, "weight_decay": a.wd,
           "ema_momentum": a.m, "tau": tau, "classes": classes, "steps": STEPS,
           "torch": torch.__version__, "summaries": names}
    return out, cfg, losses


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--width", type=float, default=0.03125)
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--bn-groups", type=int, default=8)
    p.add_argument("--queue", type=int, default=64)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.001)
    p.add_argument("--wd", type=float, default=0.05)
    p.add_argument("--m", type=float, default=0.9)
    p.add_argument("--float64", action="store_true",
                   help="only the float64 reference run (no float32 yardstick)")
    a = p.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(a.out, exist_ok=True)
    for method in ("moco-v2", "exemplar-v2", "supervised"):
        # The reference is the run in float64 (from the same f32 initial values and inputs): what
        # exact arithmetic gives, up to 1e-16. Its initial and full tensors are stored as f32
        # (the initial ones are f32 values to begin with).
        a.dtype = torch.float64
        tensors, cfg, losses = run(method, a)
        for n, t in tensors.items():
            if n.startswith(("full.", "init.")) and t.dtype == torch.float64:
                tensors[n] = t.float()
        if not a.float64:
            # The same run in float32: how far f32 rounding moves PyTorch's own run, step by step
            # (the test's yardstick for the trainer's f32 run).
            a.dtype = torch.float32
            f32, _, _ = run(method, a)
            for n in ("loss", "sum.grad", "sum.state", "sum.keys"):
                if n in f32:
                    tensors[f"f32.{n}"] = f32[n]
        path = os.path.join(a.out, f"{method}.safetensors")
        write_safetensors(path, tensors, {"config": json.dumps(cfg)})
        print(f"{path}: {os.path.getsize(path)} bytes, loss {losses[0]:.6f} -> {losses[-1]:.6f}")


if __name__ == "__main__":
    main()
