#!/usr/bin/env python3
"""Run a .tflite written by `host-trainer export --tflite` in TensorFlow Lite Micro.

    python3 scripts/tflite_run.py MODEL.tflite INPUTS.bin N OUT.bin [TENSORS_DIR]

INPUTS.bin: N int8 inputs back to back (the model's quantised NHWC input, H*W*C bytes each);
OUT.bin: the N int8 outputs, back to back. With TENSORS_DIR, every activation tensor named
`t<id>` (the runtime's tensor ids) is also written there as `s<k>_t<id>.bin` after inference k,
and every int8 activation tensor (no constant buffer) as `s<k>_i<index>.bin` by its subgraph
index (for models we did not write), so a caller can compare op by op (the interpreter then
runs with kPreserveAllTensors).

Used by exporter/tests/it/tflite_micro.rs (bit-for-bit comparison with runtime-core). The
interpreter is the `tflite-micro` PyPI package (TFLM's reference kernels); `import` failing
exits 3 so the test can tell "not installed" from a failed run. The model is also read back
with the package's generated flatbuffer schema code (a structural check of the file).
"""
import os
import sys


def main():
    if len(sys.argv) not in (5, 6):
        print(__doc__, file=sys.stderr)
        return 2
    try:
        import numpy as np
        from tflite_micro.python.tflite_micro import runtime
    except ImportError as e:
        print(f"tflite-micro/numpy not importable: {e}", file=sys.stderr)
        return 3
    model, inputs, n, out = sys.argv[1:5]
    tensors_dir = sys.argv[5] if len(sys.argv) == 6 else None
    n = int(n)
    data = open(model, "rb").read()
    # Structural read-back with TFLM's own generated schema code.
    obj = runtime.convert_bytearray_to_object(data)
    sg = obj.subgraphs[0]
    names = [t.name.decode() for t in sg.tensors]
    # Activations: int8 tensors whose buffer holds no data (constants have data).
    def constant(t):
        b = obj.buffers[t.buffer] if t.buffer < len(obj.buffers) else None
        return b is not None and b.data is not None and len(b.data) > 0
    activations = [i for i, t in enumerate(sg.tensors) if t.type == 9 and not constant(t)]
    ops = [runtime.get_builtin_code_from_operator_code(obj.operatorCodes[o.opcodeIndex]) for o in sg.operators]
    config = (
        runtime.InterpreterConfig.kPreserveAllTensors
        if tensors_dir
        else runtime.InterpreterConfig.kAllocationRecording
    )
    it = runtime.Interpreter.from_bytes(data, arena_size=max(len(data) * 10, 1 << 20), intrepreter_config=config)
    d = it.get_input_details(0)
    shape = tuple(int(s) for s in d["shape"])
    assert d["dtype"] == np.int8, f"input dtype {d['dtype']}"
    size = int(np.prod(shape))
    x = np.fromfile(inputs, dtype=np.int8)
    assert x.size == n * size, f"{x.size} input bytes for {n} x {shape}"
    ys = []
    for k in range(n):
        it.set_input(x[k * size : (k + 1) * size].reshape(shape), 0)
        it.invoke()
        y = it.get_output(0)
        assert y.dtype == np.int8, f"output dtype {y.dtype}"
        ys.append(y.reshape(-1).copy())
        if tensors_dir:
            for i, name in enumerate(names):
                if name.startswith("t") and name[1:].isdigit():
                    t = it.GetTensor(i, 0)["tensor_data"]
                    np.asarray(t, dtype=np.int8).reshape(-1).tofile(os.path.join(tensors_dir, f"s{k}_{name}.bin"))
            for i in activations:
                t = it.GetTensor(i, 0)["tensor_data"]
                np.asarray(t, dtype=np.int8).reshape(-1).tofile(os.path.join(tensors_dir, f"s{k}_i{i}.bin"))
        it.reset()
    np.concatenate(ys).astype(np.int8).tofile(out)
    print(f"tflite-micro: {len(sg.operators)} ops ({len(set(ops))} kinds), {len(names)} tensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
