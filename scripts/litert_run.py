#!/usr/bin/env python3
"""Run an int8 .tflite in LiteRT (ai-edge-litert, the TFLite runtime, with its default XNNPACK
delegate) on raw int8 inputs.

    python3 scripts/litert_run.py MODEL.tflite INPUTS.bin N OUT.bin [THREADS]

INPUTS.bin: N int8 inputs back to back (the model's quantised NHWC input tensor); OUT.bin: the
N int8 outputs, back to back (the same layout scripts/tflite_run.py uses for TFLite Micro, so a
caller compares LiteRT, TFLite Micro and runtime-core on the same tensors). THREADS: the
interpreter's num_threads (default 1).

Used by exporter/tests/it/tflite_litert.rs (the per-output difference to runtime-core; XNNPACK
rounds its requantisation differently from TFLite's reference kernels, so a few LSB are
expected). `import` failing exits 3 so the test can tell "not installed" from a failed run.
"""
import sys


def interpreter(model, threads):
    """A LiteRT interpreter on `model` (bytes) with `threads` threads, tensors allocated."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=model, num_threads=threads)
    it.allocate_tensors()
    return it


def main():
    if len(sys.argv) not in (5, 6):
        print(__doc__, file=sys.stderr)
        return 2
    try:
        import numpy as np
        import ai_edge_litert.interpreter  # noqa: F401
    except ImportError as e:
        print(f"ai-edge-litert/numpy not importable: {e}", file=sys.stderr)
        return 3
    model, inputs, n, out = sys.argv[1:5]
    threads = int(sys.argv[5]) if len(sys.argv) == 6 else 1
    n = int(n)
    it = interpreter(open(model, "rb").read(), threads)
    d, o = it.get_input_details()[0], it.get_output_details()[0]
    assert d["dtype"] == np.int8, f"input dtype {d['dtype']}"
    assert o["dtype"] == np.int8, f"output dtype {o['dtype']}"
    shape = tuple(int(s) for s in d["shape"])
    size = int(np.prod(shape))
    x = np.fromfile(inputs, dtype=np.int8)
    assert x.size == n * size, f"{x.size} input bytes for {n} x {shape}"
    ys = []
    for k in range(n):
        it.set_tensor(d["index"], x[k * size : (k + 1) * size].reshape(shape))
        it.invoke()
        ys.append(it.get_tensor(o["index"]).reshape(-1).copy())
    np.concatenate(ys).astype(np.int8).tofile(out)
    print(f"litert: {n} inputs, {threads} thread(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
