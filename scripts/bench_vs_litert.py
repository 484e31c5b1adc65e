#!/usr/bin/env python3
"""The same int8 .tflite in LiteRT (ai-edge-litert, XNNPACK) and in runtime-core, side by side.

    python3 scripts/bench_vs_litert.py MODEL.tflite [--runtime-cli PATH[,PATH...]]
        [--threads 1,2] [--runs 300] [--warmup 2000] [--rounds 5] [--json OUT.json]

One session, interleaved: each round times every (engine, threads) pair once, in an order that
alternates between rounds, so drifting machine load hits every engine alike. Each timing is the
p50 of `--runs` inferences after `--warmup` untimed ones; the table gives, per pair, the median
of the rounds' p50s and their range. The CPU (from /proc/cpuinfo) is named in the output.

Every engine gets the same int8 input tensor (pseudo-random over the whole range, seed 0,
written to a temporary file): LiteRT via `set_tensor` + `invoke` + `get_tensor` on an
interpreter made once with `num_threads` (its default delegate, XNNPACK, included),
runtime-core via `runtime-cli bench --input-raw FILE --threads T` (copy in + run, in Rust; the
`--threads` of runtime-core split the convs large enough over spinning helper threads).
LiteRT is timed from Python, which adds the calls' overhead (1–2 µs) to each run, so it is
given twice: `litert` (the three calls) and `litert-invoke` (`invoke` alone, the fairer figure
for models of a few µs); ratios are against `litert-invoke`. Several `--runtime-cli` binaries
(comma-separated: e.g. main's and a branch's) are timed in the same rounds, as
`runtime-core` (the first) and `runtime-core#2`, … Before timing, every engine runs the input
once and the largest output difference from LiteRT is printed (XNNPACK rounds differently from
TFLite's reference kernels, which runtime-core follows bit for bit).

Why the long default warm-up: LiteRT's interpreter (and its thread pool) lives through all
rounds, while each runtime-cli run is a fresh process, whose helper thread needed a few hundred
inferences before it ran beside the owner on the 2-vCPU development VM (20 warm-up runs left
8 of 8 processes at their 1-thread time).

runtime-cli: built in release mode (`cargo build --release -p runtime-cli`); `--runtime-cli`
names the binary, else target/release/runtime-cli under $CARGO_TARGET_DIR or the repository.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def runtime_cli_path(arg):
    if arg:
        return arg
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(root, "target"))
    return os.path.join(target, "release", "runtime-cli")


def litert_version():
    try:
        from importlib.metadata import version

        return "ai-edge-litert " + version("ai-edge-litert")
    except Exception:
        return "ai-edge-litert"


def litert_p50(it, x, runs, warmup):
    """(p50 of set_tensor + invoke + get_tensor, p50 of invoke alone), in ms."""
    d, o = it.get_input_details()[0], it.get_output_details()[0]
    for _ in range(warmup):
        it.set_tensor(d["index"], x)
        it.invoke()
    ms, inv = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        it.set_tensor(d["index"], x)
        t1 = time.perf_counter()
        it.invoke()
        t2 = time.perf_counter()
        it.get_tensor(o["index"])
        t3 = time.perf_counter()
        ms.append((t3 - t0) * 1e3)
        inv.append((t2 - t1) * 1e3)
    return statistics.median(ms), statistics.median(inv)


def runtime_p50(cli, model, raw, threads, runs, warmup):
    out = subprocess.run(
        [cli, "bench", "--model", model, "--input-raw", raw, "--threads", str(threads),
         "--runs", str(runs), "--warmup", str(warmup), "--json"],
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out)["p50_ms"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--runtime-cli")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json")
    a = ap.parse_args()
    try:
        import numpy as np
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as e:
        print(f"ai-edge-litert/numpy not importable: {e} (pip install ai-edge-litert)", file=sys.stderr)
        return 3
    clis = [runtime_cli_path(p) for p in (a.runtime_cli.split(",") if a.runtime_cli else [None])]
    for cli in clis:
        if not os.path.exists(cli):
            print(f"{cli}: no runtime-cli binary (cargo build --release -p runtime-cli, or --runtime-cli)", file=sys.stderr)
            return 2
    names = ["runtime-core"] + [f"runtime-core#{i + 1}" for i in range(1, len(clis))]
    threads = [int(t) for t in a.threads.split(",")]
    data = open(a.model, "rb").read()
    interp = {}
    for t in threads:
        it = Interpreter(model_content=data, num_threads=t)
        it.allocate_tensors()
        interp[t] = it
    d = interp[threads[0]].get_input_details()[0]
    assert d["dtype"] == np.int8, f"{a.model}: input dtype {d['dtype']}; an int8 model is compared"
    shape = tuple(int(s) for s in d["shape"])
    x = np.random.default_rng(0).integers(-128, 128, size=shape, dtype=np.int8)

    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "input.bin")
        x.tofile(raw)
        # The same input through every engine once: how far apart the outputs are.
        it = interp[threads[0]]
        it.set_tensor(d["index"], x)
        it.invoke()
        lite = it.get_tensor(it.get_output_details()[0]["index"]).reshape(-1).astype(int)
        max_diff = 0
        for cli in clis:
            inferred = subprocess.run([cli, "infer", "--model", a.model, "--input-raw", raw, "--json"],
                                      check=True, capture_output=True, text=True).stdout
            ours = np.array(json.loads(inferred)["results"][0]["raw_int8"], dtype=int)
            assert ours.size == lite.size, f"output sizes {ours.size} vs {lite.size}"
            max_diff = max(max_diff, int(np.abs(lite - ours).max()))

        engines = ["litert"] + names
        pairs = [(e, t) for t in threads for e in engines]
        p50 = {p: [] for p in pairs}
        for t in threads:
            p50[("litert-invoke", t)] = []
        for r in range(a.rounds):
            order = pairs if r % 2 == 0 else pairs[::-1]
            for e, t in order:
                if e == "litert":
                    call, inv = litert_p50(interp[t], x, a.runs, a.warmup)
                    p50[(e, t)].append(call)
                    p50[("litert-invoke", t)].append(inv)
                else:
                    cli = clis[names.index(e)]
                    p50[(e, t)].append(runtime_p50(cli, a.model, raw, t, a.runs, a.warmup))

    cpu = cpu_name()
    rows = []
    for (e, t), v in sorted(p50.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        rows.append({"engine": e, "threads": t, "p50_ms_median": statistics.median(v),
                     "p50_ms_min": min(v), "p50_ms_max": max(v), "p50_ms_rounds": v})
    result = {
        "model": a.model, "cpu": cpu, "cores": os.cpu_count(), "runs": a.runs, "warmup": a.warmup,
        "rounds": a.rounds, "input_shape": list(shape), "max_output_diff_lsb": max_diff,
        "litert": litert_version(), "runtime_cli": dict(zip(names, clis)),
        "results": rows,
    }
    print(f"{a.model} on {cpu} ({os.cpu_count()} logical CPUs): p50 of {a.runs} runs after {a.warmup} warm-up, median over {a.rounds} interleaved rounds")
    print(f"same int8 input in every engine; largest output difference LiteRT vs runtime-core: {max_diff} LSB")
    print(f"{'engine':<16}{'threads':>8}{'p50 ms':>10}{'range':>22}")
    for r in rows:
        print(f"{r['engine']:<16}{r['threads']:>8}{r['p50_ms_median']:>10.4f}   [{r['p50_ms_min']:.4f}, {r['p50_ms_max']:.4f}]")
    for t in threads:
        lr = statistics.median(p50[("litert-invoke", t)])
        for n in names:
            rc = statistics.median(p50[(n, t)])
            print(f"{t} thread(s): {n} / LiteRT invoke = {rc / lr:.2f}x the time")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=2)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
