#!/usr/bin/env python3
"""Every op of an int8 ONNX model written by `host-trainer export --onnx`, run alone by onnxruntime
on runtime-core's own input tensors, against runtime-core's output tensor.

    python3 scripts/onnx_per_op.py MODEL.onnx MANIFEST.json OUT.json

MANIFEST.json (written by exporter/tests/it/onnx_runtime.rs from `Model::run_i8_traced`):
    {"samples": N, "dir": DIR, "input_shape": [H, W, C],
     "tensors": {"<id>": {"shape": [H, W, C], "scale": s, "zp": z}, ...},
     "nodes": [{"op": "conv", "inputs": [ids], "output": id}, ...], "input_id": id}
with DIR/s<k>_t<id>.bin the int8 HWC values of tensor <id> for sample k, and DIR/s<k>_input.bin
the normalised float32 NCHW input. The ONNX graph names each int8 activation `t<id>`, so every
runtime op is the subgraph from its input tensors to its output tensor (`onnx.utils.Extractor`);
the input's QuantizeLinear is the subgraph from `input` to `t<input_id>`. Each subgraph runs in
onnxruntime (one thread, default graph optimisations, which fuse the QDQ patterns into the same
QLinear kernels the whole model uses) on runtime-core's tensors, so no difference upstream
carries into the op's comparison.

OUT.json: one row per op: op, output id, values compared, values that differ, max and mean |Δ| in
LSB. Exit 3 if onnxruntime/numpy/onnx cannot be imported.
"""
import json
import os
import sys


def main():
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        import numpy as np
        import onnx
        import onnx.utils
        import onnxruntime as ort
    except ImportError as e:
        print(f"onnxruntime/numpy/onnx not importable: {e}", file=sys.stderr)
        return 3
    model_path, manifest_path, out_path = sys.argv[1:]
    man = json.load(open(manifest_path))
    # Every tensor needs a value_info for the extractor: infer them.
    model = onnx.shape_inference.infer_shapes(onnx.load(model_path), strict_mode=True)
    ex = onnx.utils.Extractor(model)
    d = man["dir"]

    def tensor(k, tid):
        h, w, c = man["tensors"][str(tid)]["shape"]
        v = np.fromfile(os.path.join(d, f"s{k}_t{tid}.bin"), dtype=np.int8)
        return v.reshape(h, w, c).transpose(2, 0, 1)[None]  # NCHW

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    ops = [{"op": "input", "inputs": [], "output": man["input_id"]}] + man["nodes"]
    rows = []
    for node in ops:
        out = f"t{node['output']}"
        ins = ["input"] if node["op"] == "input" else [f"t{i}" for i in node["inputs"]]
        # One name per distinct input (an add of a tensor with itself reads it once).
        ins = list(dict.fromkeys(ins))
        sub = ex.extract_model(ins, [out])
        sess = ort.InferenceSession(sub.SerializeToString(), so, providers=["CPUExecutionProvider"])
        diffs = []
        for k in range(man["samples"]):
            if node["op"] == "input":
                h, w, c = man["input_shape"]
                x = np.fromfile(os.path.join(d, f"s{k}_input.bin"), dtype="<f4").reshape(1, c, h, w)
                feeds = {"input": x}
            else:
                feeds = {f"t{i}": tensor(k, i) for i in node["inputs"]}
            got = sess.run([out], feeds)[0].astype(np.int32)
            want = tensor(k, node["output"]).astype(np.int32)
            diffs.append(np.abs(got - want).reshape(-1))
        dd = np.concatenate(diffs)
        rows.append({
            "op": node["op"],
            "output": node["output"],
            "values": int(dd.size),
            "differ": int((dd > 0).sum()),
            "max_lsb": int(dd.max()),
            "mean_lsb": float(dd.mean()),
        })
    json.dump({"onnxruntime": ort.__version__, "rows": rows}, open(out_path, "w"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
