#!/usr/bin/env python3
"""Run an ONNX model written by `host-trainer export --onnx` with onnxruntime.

    python3 scripts/onnx_run.py MODEL.onnx INPUTS.bin N C H W OUT.bin

INPUTS.bin: N float32 NCHW images (little-endian, already normalised); OUT.bin: the N outputs,
float32, back to back. Used by exporter/tests/it/onnx_runtime.rs (the comparison with
runtime-core); `import onnxruntime` failing exits 3 so the test can tell "not installed" from a
failed run. When the `onnx` package is there too, the model is first checked with
onnx.checker (full check, strict shape inference): a standard model or an error.
"""
import sys


def main():
    if len(sys.argv) != 8:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        import numpy as np
        import onnxruntime as ort
    except ImportError as e:
        print(f"onnxruntime/numpy not importable: {e}", file=sys.stderr)
        return 3
    model, inputs, n, c, h, w, out = sys.argv[1:]
    n, c, h, w = int(n), int(c), int(h), int(w)
    try:
        import onnx
    except ImportError:
        onnx = None
    if onnx is not None:
        m = onnx.load(model)
        onnx.checker.check_model(m, full_check=True)
        onnx.shape_inference.infer_shapes(m, check_type=True, strict_mode=True)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    x = np.fromfile(inputs, dtype="<f4").reshape(n, c, h, w)
    ys = [sess.run(["output"], {"input": x[i : i + 1]})[0].reshape(-1) for i in range(n)]
    np.concatenate(ys).astype("<f4").tofile(out)
    print(f"onnxruntime {ort.__version__}" + (f", onnx {onnx.__version__} checker ok" if onnx else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
