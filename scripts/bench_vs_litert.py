#!/usr/bin/env python3
"""The same int8 .tflite in LiteRT (ai-edge-litert, XNNPACK) and in runtime-core, side by side.

    python3 scripts/bench_vs_litert.py MODEL.tflite [--runtime-cli PATH] [--threads 1,2]
        [--runs 200] [--warmup 20] [--rounds 5] [--json OUT.json]

One session, interleaved: each round times every (engine, threads) pair once, in an order that
alternates between rounds, so drifting machine load hits both engines alike. Each timing is the
p50 of `--runs` inferences after `--warmup` untimed ones; the table gives, per pair, the median
of the rounds' p50s and their range. The CPU (from /proc/cpuinfo) is named in the output.

Both engines get the same int8 input tensor (pseudo-random over the whole range, seed 0,
written to a temporary file): LiteRT via `set_tensor` + `invoke` on an interpreter made once with
`num_threads` (its default delegate, XNNPACK, included), runtime-core via
`runtime-cli bench --input-raw FILE --threads T` (copy in + run, in Rust; the `--threads` of
runtime-core split the larger convs over a spinning helper team). LiteRT is timed from Python:
`invoke()` adds the Python call (a few µs) to each of its runs. Before timing, both engines run
the input once and the largest output difference is printed (XNNPACK rounds differently from
TFLite's reference kernels, which runtime-core follows bit for bit).

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
    d, o = it.get_input_details()[0], it.get_output_details()[0]
    for _ in range(warmup):
        it.set_tensor(d["index"], x)
        it.invoke()
    ms = []
    for _ in range(runs):
        t = time.perf_counter()
        it.set_tensor(d["index"], x)
        it.invoke()
        it.get_tensor(o["index"])
        ms.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ms)


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
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json")
    a = ap.parse_args()
    try:
        import numpy as np
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as e:
        print(f"ai-edge-litert/numpy not importable: {e} (pip install ai-edge-litert)", file=sys.stderr)
        return 3
    cli = runtime_cli_path(a.runtime_cli)
    if not os.path.exists(cli):
        print(f"{cli}: no runtime-cli binary (cargo build --release -p runtime-cli, or --runtime-cli)", file=sys.stderr)
        return 2
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
        # The same input through both once: how far apart the outputs are.
        it = interp[threads[0]]
        it.set_tensor(d["index"], x)
        it.invoke()
        lite = it.get_tensor(it.get_output_details()[0]["index"]).reshape(-1).astype(int)
        inferred = subprocess.run([cli, "infer", "--model", a.model, "--input-raw", raw, "--json"],
                                  check=True, capture_output=True, text=True).stdout
        ours = np.array(json.loads(inferred)["results"][0]["raw_int8"], dtype=int)
        assert ours.size == lite.size, f"output sizes {ours.size} vs {lite.size}"
        max_diff = int(np.abs(lite - ours).max())

        pairs = [(e, t) for t in threads for e in ("litert", "runtime-core")]
        p50 = {p: [] for p in pairs}
        for r in range(a.rounds):
            order = pairs if r % 2 == 0 else pairs[::-1]
            for e, t in order:
                if e == "litert":
                    p50[(e, t)].append(litert_p50(interp[t], x, a.runs, a.warmup))
                else:
                    p50[(e, t)].append(runtime_p50(cli, a.model, raw, t, a.runs, a.warmup))

    cpu = cpu_name()
    rows = []
    for (e, t), v in p50.items():
        rows.append({"engine": e, "threads": t, "p50_ms_median": statistics.median(v),
                     "p50_ms_min": min(v), "p50_ms_max": max(v), "p50_ms_rounds": v})
    result = {
        "model": a.model, "cpu": cpu, "cores": os.cpu_count(), "runs": a.runs, "warmup": a.warmup,
        "rounds": a.rounds, "input_shape": list(shape), "max_output_diff_lsb": max_diff,
        "litert": litert_version(),
        "results": rows,
    }
    print(f"{a.model} on {cpu} ({os.cpu_count()} logical CPUs): p50 of {a.runs} runs, median over {a.rounds} interleaved rounds")
    print(f"same int8 input in both; largest output difference LiteRT vs runtime-core: {max_diff} LSB")
    print(f"{'engine':<14}{'threads':>8}{'p50 ms':>10}{'range':>22}")
    for r in rows:
        print(f"{r['engine']:<14}{r['threads']:>8}{r['p50_ms_median']:>10.3f}   [{r['p50_ms_min']:.3f}, {r['p50_ms_max']:.3f}]")
    for t in threads:
        lr = statistics.median(p50[("litert", t)])
        rc = statistics.median(p50[("runtime-core", t)])
        print(f"{t} thread(s): runtime-core / LiteRT = {rc / lr:.2f}x the time")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=2)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
