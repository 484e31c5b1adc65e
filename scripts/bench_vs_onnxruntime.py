#!/usr/bin/env python3
"""Time runtime-core and onnxruntime on the same int8 model, same thread count, in one run.

    python3 scripts/bench_vs_onnxruntime.py MODEL.safetensors [MODEL.safetensors ...]
        [--threads 1] [--runs 200] [--warmup 20] [--host-trainer PATH] [--runtime-cli PATH] [--json]

Not in CI (needs `pip install onnxruntime numpy`). For each runtime model (an int8 file written by
`host-trainer export`, or a runtime-core builder model such as fixtures/mcu/resnet8.safetensors):

1. converts it to ONNX with `host-trainer export --model M --onnx M.onnx` (same weights, scales and
   zero points: QuantizeLinear / QLinearConv / DequantizeLinear, see README "Bring your own
   checkpoint");
2. times onnxruntime (CPUExecutionProvider, intra_op_num_threads = --threads,
   inter_op_num_threads = 1, sequential execution, graph optimisations on, which fuse the
   DequantizeLinear/op/QuantizeLinear triples into its QLinear kernels) on one random normalised
   image: median of --runs after --warmup;
3. times runtime-core with `runtime-cli bench --model M --threads T --json` (same counts), the
   fast kernels and the reference kernels (`--reference-kernels`, one thread);
4. prints the medians, the ratio onnxruntime / runtime-core (> 1: runtime-core is faster) and the
   CPU model.

Output agreement is not re-checked here: exporter/tests/it/onnx_runtime.rs compares the two
engines' outputs on the fixtures (f32 within 1e-4, int8 within its documented LSB bound, and every
int8 op alone within 1 LSB, scripts/onnx_per_op.py). Run it
on an idle machine and interleave repeats: timings on a shared 2-core VM swing by ±20 %.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time


def cpu_name():
    """The CPU model and its int8-relevant SIMD flags, from /proc/cpuinfo."""
    name, flags = platform.processor(), []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and name == platform.processor():
                    name = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = value.split()
    except OSError:
        pass
    simd = ",".join(x for x in ("avx2", "avx512f", "avx512_vnni", "avx_vnni") if x in flags)
    return f"{name} ({simd}; {os.cpu_count()} CPUs)"


def ort_median_ms(onnx_path, runs, warmup, threads):
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    for _ in range(warmup):
        sess.run(None, {inp.name: x})
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, {inp.name: x})
        ts.append((time.perf_counter() - t) * 1e3)
    ts.sort()
    return ts[len(ts) // 2], ort.__version__


def runtime_median_ms(cli, model, runs, warmup, reference, threads=1):
    cmd = [cli, "bench", "--model", model, "--runs", str(runs), "--warmup", str(warmup),
           "--threads", str(threads), "--json"]
    if reference:
        cmd.append("--reference-kernels")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--host-trainer", default="target/release/host-trainer")
    ap.add_argument("--runtime-cli", default="target/release/runtime-cli")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    try:
        import onnxruntime  # noqa: F401
    except ImportError as e:
        print(f"onnxruntime is not importable ({e}): pip install onnxruntime numpy", file=sys.stderr)
        return 3
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for m in a.models:
            onnx_path = os.path.join(tmp, os.path.basename(m) + ".onnx")
            subprocess.run([a.host_trainer, "export", "--model", m, "--onnx", onnx_path], check=True,
                           capture_output=True, text=True)
            fast = runtime_median_ms(a.runtime_cli, m, a.runs, a.warmup, False, a.threads)
            ort_ms, ort_version = ort_median_ms(onnx_path, a.runs, a.warmup, a.threads)
            ref = runtime_median_ms(a.runtime_cli, m, a.runs, a.warmup, True)
            rows.append({
                "model": m,
                "runtime_core_ms": fast["p50_ms"],
                "runtime_core_reference_ms": ref["p50_ms"],
                "kernels": fast.get("kernels"),
                "onnxruntime_ms": ort_ms,
                "onnxruntime": ort_version,
                "ratio_ort_over_runtime_core": ort_ms / fast["p50_ms"],
            })
    cpu = cpu_name()
    if a.json:
        print(json.dumps({"cpu": cpu, "threads": a.threads, "runs": a.runs, "rows": rows}))
        return 0
    print(f"CPU: {cpu}; {a.threads} thread(s); median of {a.runs} runs after {a.warmup} warm-up")
    print("| model | runtime-core fast | runtime-core reference | onnxruntime | onnxruntime / runtime-core |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['runtime_core_ms']:.3f} ms | {r['runtime_core_reference_ms']:.3f} ms "
              f"| {r['onnxruntime_ms']:.3f} ms ({r['onnxruntime']}) | {r['ratio_ort_over_runtime_core']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
