#!/usr/bin/env python3
"""Time one MoCo-v2 training step in PyTorch (CPU by default, `--device cuda` for the GPU check), as
the reference for the candle trainer.

Model: torchvision ResNet-18 with the small-image stem (conv1 3x3 stride 1 padding 1, no
maxpool), MLP projection head 512-512-128, query encoder trained by SGD (momentum 0.9, weight
decay 1e-4), key encoder updated by momentum 0.999, a 4096-entry negative queue, temperature 0.2.
Shuffle-BN is not emulated (it costs nothing measurable on one device). Batch 128 and 32 px by
default, 2 threads (`torch.set_num_threads`), like the machine the issue "Training speed on CPU"
was measured on.

Prints one JSON object with img/s and the median time of each phase (forward incl. EMA, key
forward and loss; backward; SGD + enqueue; timed in separate steps synchronised between phases).
The candle figure for the ratio candle/PyTorch comes either from `--candle-img-per-sec X`, or
from `--candle-cmd "..."`: a command whose stdout contains a JSON object with an `img_per_sec`
field (e.g. the trainer's step benchmark), run in the same invocation so both numbers come from
the same machine state; when that object has per-phase times (`host-trainer bench-step --json`),
`speed_ratio_candle_over_torch` gives PyTorch time / candle time per phase and run.

Not run by CI: it needs `pip install torch torchvision` (about 5.5 GB).
"""

import argparse
import json
import shlex
import subprocess
import sys
import time


def scaled_resnet18(torch, width, dim):
    """torchvision's ResNet-18 graph (BasicBlocks, [2, 2, 2, 2]) with every stage's channels
    scaled by `width` (64·w … 512·w, at least 1), small-image stem, plain BN, MLP head: the
    trainer's `--width` backbone."""
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            return torch.relu(y + (x if self.down is None else self.down(x)))

    chans = [max(1, round(c * width)) for c in (64, 128, 256, 512)]
    layers = [nn.Conv2d(3, chans[0], 3, 1, 1, bias=False), nn.BatchNorm2d(chans[0]), nn.ReLU(inplace=True)]
    cin = chans[0]
    for i, c in enumerate(chans):
        for b in range(2):
            layers.append(Block(cin, c, 2 if (i > 0 and b == 0) else 1))
            cin = c
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, cin), nn.ReLU(inplace=True), nn.Linear(cin, dim)]
    return nn.Sequential(*layers)


def build_encoder(torch, torchvision, dim, width=1.0):
    if width != 1.0:
        return scaled_resnet18(torch, width, dim)
    net = torchvision.models.resnet18(num_classes=dim)
    net.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = torch.nn.Identity()
    hidden = net.fc.in_features
    net.fc = torch.nn.Sequential(torch.nn.Linear(hidden, hidden), torch.nn.ReLU(inplace=True), torch.nn.Linear(hidden, dim))
    return net


def candle_figure(args):
    """(img/s, the candle command's whole JSON object or None)."""
    if args.candle_img_per_sec is not None:
        return args.candle_img_per_sec, None
    if args.candle_cmd:
        out = subprocess.run(shlex.split(args.candle_cmd), check=True, capture_output=True, text=True).stdout
        for line in reversed(out.splitlines()):
            line = line.strip()
            if line.startswith("{"):
                try:
                    obj = json.loads(line)
                    return float(obj["img_per_sec"]), obj
                except (ValueError, KeyError):
                    continue
        sys.exit(f"--candle-cmd output has no JSON line with img_per_sec:\n{out[-2000:]}")
    return None, None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--width", type=float, default=1.0, help="channel multiplier (the trainer's --width)")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--queue", type=int, default=4096)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", type=str, default="cpu", help="cpu or cuda (the GPU check of the cuda feature)")
    ap.add_argument("--candle-img-per-sec", type=float, default=None)
    ap.add_argument("--candle-cmd", type=str, default=None, help="command printing a JSON line with img_per_sec")
    args = ap.parse_args()

    import torch
    import torchvision

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    q_enc = build_encoder(torch, torchvision, args.dim, args.width).to(dev)
    k_enc = build_encoder(torch, torchvision, args.dim, args.width).to(dev)
    k_enc.load_state_dict(q_enc.state_dict())
    for p in k_enc.parameters():
        p.requires_grad_(False)
    q_enc.train()
    k_enc.train()
    queue = torch.nn.functional.normalize(torch.randn(args.dim, args.queue, device=dev), dim=0)
    opt = torch.optim.SGD(q_enc.parameters(), lr=0.03, momentum=0.9, weight_decay=1e-4)
    tau, m = 0.2, 0.999
    # Two augmented views are already tensors: augmentation is timed separately in the trainer.
    im_q = torch.randn(args.batch, 3, args.size, args.size, device=dev)
    im_k = torch.randn(args.batch, 3, args.size, args.size, device=dev)

    def step(phase_times=None):
        nonlocal queue
        if phase_times is not None:
            sync()
            t0 = time.perf_counter()
        q = torch.nn.functional.normalize(q_enc(im_q), dim=1)
        with torch.no_grad():
            for pq, pk in zip(q_enc.parameters(), k_enc.parameters()):
                pk.mul_(m).add_(pq.detach(), alpha=1 - m)
            k = torch.nn.functional.normalize(k_enc(im_k), dim=1)
        l_pos = (q * k).sum(dim=1, keepdim=True)
        l_neg = q @ queue
        logits = torch.cat([l_pos, l_neg], dim=1) / tau
        labels = torch.zeros(args.batch, dtype=torch.long, device=dev)
        loss = torch.nn.functional.cross_entropy(logits, labels)
        opt.zero_grad(set_to_none=True)
        if phase_times is not None:
            # candle's forward ends by reading the loss value back; so does this one.
            loss.item()
            sync()
            t1 = time.perf_counter()
        loss.backward()
        if phase_times is not None:
            sync()
            t2 = time.perf_counter()
        opt.step()
        with torch.no_grad():
            queue = torch.cat([k.T, queue[:, : args.queue - args.batch]], dim=1)
        if phase_times is not None:
            sync()
            phase_times.append((t1 - t0, t2 - t1, time.perf_counter() - t2))
        return loss

    # Forward/backward split of the query encoder alone, for the report.
    def split():
        sync()
        t0 = time.perf_counter()
        loss = q_enc(im_q).square().sum()
        sync()
        t1 = time.perf_counter()
        loss.backward()
        sync()
        t2 = time.perf_counter()
        q_enc.zero_grad(set_to_none=True)
        return t1 - t0, t2 - t1

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        sync()
        t = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t)
    times.sort()
    med = times[len(times) // 2]
    # The same step again, synchronised between phases (forward incl. EMA and key forward and
    # loss; backward; SGD and enqueue), as `host-trainer bench-step` splits it.
    phases = []
    for _ in range(args.steps):
        step(phases)
    phase_med = [sorted(p[i] for p in phases)[len(phases) // 2] for i in range(3)]
    fwd, bwd = min((split() for _ in range(max(2, args.steps // 2))), key=sum)
    result = {
        "framework": "pytorch",
        "torch_version": torch.__version__,
        "device": args.device,
        "threads": args.threads,
        "batch": args.batch,
        "size": args.size,
        "step_s_median": med,
        "img_per_sec": args.batch / med,
        "query_encoder_forward_s": fwd,
        "query_encoder_backward_s": bwd,
        "forward_s": phase_med[0],
        "backward_s": phase_med[1],
        "optimizer_s": phase_med[2],
    }
    candle, obj = candle_figure(args)
    if candle is not None:
        result["candle_img_per_sec"] = candle
        result["ratio_candle_over_torch"] = candle / result["img_per_sec"]
    if obj is not None:
        # Per phase: PyTorch time / candle time (> 1 = candle faster), for every candle run
        # (`runs`: this crate's kernels first, then with --baseline candle's own ops).
        result["candle"] = obj
        per_phase = {}
        for run in obj.get("runs", [obj]):
            r = {}
            for ph in ("forward_s", "backward_s", "optimizer_s"):
                if run.get(ph):
                    r[ph.replace("_s", "")] = result[ph] / run[ph]
            if run.get("img_per_sec"):
                r["step"] = run["img_per_sec"] / result["img_per_sec"]
            per_phase[run.get("ops", "candle")] = r
        result["speed_ratio_candle_over_torch"] = per_phase
    print(json.dumps(result))


if __name__ == "__main__":
    main()
