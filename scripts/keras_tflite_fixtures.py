#!/usr/bin/env python3
"""Models we did not write: small Keras nets converted by TensorFlow's own TFLite converter,
run in TensorFlow Lite Micro, committed as fixtures (fixtures/tflite/keras_*).

    python3 scripts/keras_tflite_fixtures.py [OUT_DIR]      # default fixtures/tflite

Needs `tensorflow-cpu` and `tflite-micro` from PyPI (a virtualenv keeps TensorFlow's numpy pins
away from the rest: `python3 -m venv v && v/bin/pip install tensorflow-cpu tflite-micro`). CI
does not run this script: it reads the committed files (runtime-core/tests/tflite_keras.rs runs
each .tflite in runtime-core and compares with TFLite Micro's outputs bit for bit).

Two nets, random weights (fixed seed), BatchNorm with random statistics (so folding it into the
convolutions is not a no-op), full-integer int8 quantisation with a representative dataset:

* keras_resnet: ResNet-style (3x3 conv stem, two residual blocks, the second with stride 2 and a
  1x1 projection, global average pool, dense, softmax); int8 input and output
  (`inference_input_type = inference_output_type = tf.int8`).
* keras_mobilenet: MobileNet-style depthwise separable net (3x3 stride-2 conv, depthwise 3x3 SAME,
  1x1 pointwise, ZeroPadding2D + depthwise 3x3 stride-2 VALID, kept as PAD + DEPTHWISE_CONV_2D, a depthwise
  with depth_multiplier 2, global average pool, dense, softmax); the converter's default float
  interface: float32 in and out through QUANTIZE and DEQUANTIZE. ReLU6 as MobileNet has it
  (fused RELU6; the calibrated ranges end at most at 6, so it clamps as RELU does).

Files per net NAME (all little-endian, NHWC, inputs back to back):
  NAME.tflite           the converter's output
  NAME.input.bin        N inputs: int8 (int8 interface) or float32 (float interface)
  NAME.output.bin       TFLite Micro's N outputs, same dtype as its output
  NAME.output_q.bin     (float interface only) TFLite Micro's int8 tensor feeding DEQUANTIZE
  NAME.logits.bin       TFLite Micro's int8 tensor feeding SOFTMAX (the dense layer's output)
  NAME.tensors.txt      one line per int8 activation tensor: its subgraph index and length
  NAME.tensors.bin      those tensors' values after each of the first TRACED inputs, in order
"""
import os
import sys

import numpy as np

SEED = 20261207
N_INPUTS = 8
# Every int8 activation tensor is kept for the first TRACED inputs (op-by-op comparison).
TRACED = 2


def build_resnet(tf):
    L = tf.keras.layers
    x = inp = L.Input((24, 24, 3), batch_size=1)
    x = L.Conv2D(12, 3, padding="same", use_bias=False)(x)
    x = L.BatchNormalization()(x)
    x = L.ReLU()(x)
    # Identity block.
    y = L.Conv2D(12, 3, padding="same", use_bias=False)(x)
    y = L.BatchNormalization()(y)
    y = L.ReLU()(y)
    y = L.Conv2D(12, 3, padding="same", use_bias=False)(y)
    y = L.BatchNormalization()(y)
    x = L.ReLU()(L.Add()([x, y]))
    # Downsampling block with a 1x1 stride-2 projection.
    y = L.Conv2D(24, 3, strides=2, padding="same", use_bias=False)(x)
    y = L.BatchNormalization()(y)
    y = L.ReLU()(y)
    y = L.Conv2D(24, 3, padding="same", use_bias=False)(y)
    y = L.BatchNormalization()(y)
    s = L.Conv2D(24, 1, strides=2, use_bias=False)(x)
    s = L.BatchNormalization()(s)
    x = L.ReLU()(L.Add()([s, y]))
    x = L.MaxPooling2D(2)(x)
    x = L.GlobalAveragePooling2D()(x)
    x = L.Dense(10)(x)
    x = L.Softmax()(x)
    return tf.keras.Model(inp, x, name="keras_resnet")


def build_mobilenet(tf):
    L = tf.keras.layers
    x = inp = L.Input((24, 24, 3), batch_size=1)
    x = L.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(x)
    x = L.BatchNormalization()(x)
    x = L.ReLU(6.0)(x)
    # Depthwise separable, stride 1, SAME.
    x = L.DepthwiseConv2D(3, padding="same", use_bias=False)(x)
    x = L.BatchNormalization()(x)
    x = L.ReLU(6.0)(x)
    x = L.Conv2D(16, 1, use_bias=False)(x)
    x = L.BatchNormalization()(x)
    x = L.ReLU(6.0)(x)
    # Depthwise separable, stride 2, as MobileNet v1: explicit zero padding, VALID.
    # ((1, 1), (1, 1)) is not TFLite's SAME for stride 2 (which pads (0, 1)), so the converter
    # keeps a PAD before the VALID depthwise conv.
    x = L.ZeroPadding2D(((1, 1), (1, 1)))(x)
    x = L.DepthwiseConv2D(3, strides=2, padding="valid", use_bias=False)(x)
    x = L.BatchNormalization()(x)
    x = L.ReLU(6.0)(x)
    x = L.Conv2D(24, 1, use_bias=False)(x)
    x = L.BatchNormalization()(x)
    x = L.ReLU(6.0)(x)
    # Depth multiplier 2, with a bias and no BatchNorm.
    x = L.DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=2)(x)
    x = L.ReLU(6.0)(x)
    x = L.GlobalAveragePooling2D()(x)
    x = L.Dense(10)(x)
    x = L.Softmax()(x)
    return tf.keras.Model(inp, x, name="keras_mobilenet")


def randomise_batchnorm(tf, model, rng):
    """Random BatchNorm statistics and affine parameters (fresh layers have mean 0, var 1)."""
    for layer in model.layers:
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, c).astype(np.float32),  # gamma
                    rng.uniform(-0.3, 0.3, c).astype(np.float32),  # beta
                    rng.uniform(-0.2, 0.2, c).astype(np.float32),  # moving mean
                    rng.uniform(0.5, 2.0, c).astype(np.float32),  # moving variance
                ]
            )


def convert(tf, model, rng, int8_interface):
    shape = model.input_shape
    calib = [rng.uniform(-1.0, 1.0, (1,) + tuple(shape[1:])).astype(np.float32) for _ in range(64)]

    def representative():
        for x in calib:
            yield [x]

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if int8_interface:
        conv.inference_input_type = tf.int8
        conv.inference_output_type = tf.int8
    return conv.convert()


def run_tflm(data, xs):
    """TFLite Micro's outputs (and, for a float output, the int8 tensor DEQUANTIZE reads)."""
    from tflite_micro.python.tflite_micro import runtime

    obj = runtime.convert_bytearray_to_object(data)
    sg = obj.subgraphs[0]
    ops = [runtime.get_builtin_code_from_operator_code(obj.operatorCodes[o.opcodeIndex]) for o in sg.operators]
    deq = [o for o, code in zip(sg.operators, ops) if code == 6]  # DEQUANTIZE
    softmax = [o for o, code in zip(sg.operators, ops) if code == 25]
    it = runtime.Interpreter.from_bytes(
        data, arena_size=1 << 22, intrepreter_config=runtime.InterpreterConfig.kPreserveAllTensors
    )
    def constant(t):
        b = obj.buffers[t.buffer] if t.buffer < len(obj.buffers) else None
        return b is not None and b.data is not None and len(b.data) > 0

    acts = [i for i, t in enumerate(sg.tensors) if t.type == 9 and not constant(t)]
    ys, qs, logits, traced = [], [], [], []
    for k, x in enumerate(xs):
        it.set_input(x, 0)
        it.invoke()
        ys.append(it.get_output(0).reshape(-1).copy())
        if deq:
            t = it.GetTensor(int(deq[-1].inputs[0]), 0)["tensor_data"]
            qs.append(np.asarray(t, dtype=np.int8).reshape(-1).copy())
        t = it.GetTensor(int(softmax[-1].inputs[0]), 0)["tensor_data"]
        logits.append(np.asarray(t, dtype=np.int8).reshape(-1).copy())
        if k < TRACED:
            traced.append([(i, np.asarray(it.GetTensor(i, 0)["tensor_data"], dtype=np.int8).reshape(-1).copy()) for i in acts])
        it.reset()
    names = sorted({str(c) for c in ops})
    return np.stack(ys), (np.stack(qs) if qs else None), np.stack(logits), traced, len(ops), names


def inputs(rng, shape, int8_interface, in_scale, in_zp):
    """N_INPUTS inputs: noise over the calibrated range, a smooth ramp, a constant, extremes."""
    h, w, c = shape
    xs = []
    for k in range(N_INPUTS):
        if k == 0:
            f = np.linspace(-1, 1, h * w * c, dtype=np.float32).reshape(h, w, c)
        elif k == 1:
            f = np.full((h, w, c), 0.25, np.float32)
        elif k == 2:
            f = rng.choice([-1.5, 1.5], (h, w, c)).astype(np.float32)  # beyond the calibration
        else:
            f = rng.uniform(-1.0, 1.0, (h, w, c)).astype(np.float32)
        f = f[None]
        if int8_interface:
            q = np.clip(np.round(f / in_scale) + in_zp, -128, 127).astype(np.int8)
            xs.append(q)
        else:
            xs.append(f)
    return xs


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "fixtures", "tflite")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.keras.utils.set_random_seed(SEED)
    rng = np.random.default_rng(SEED)
    for name, build, int8_interface in [
        ("keras_resnet", build_resnet, True),
        ("keras_mobilenet", build_mobilenet, False),
    ]:
        model = build(tf)
        randomise_batchnorm(tf, model, rng)
        data = convert(tf, model, rng, int8_interface)
        from tflite_micro.python.tflite_micro import runtime

        obj = runtime.convert_bytearray_to_object(data)
        sg = obj.subgraphs[0]
        t_in = sg.tensors[sg.inputs[0]]
        if int8_interface:
            in_scale, in_zp = float(t_in.quantization.scale[0]), int(t_in.quantization.zeroPoint[0])
        else:
            in_scale, in_zp = 1.0, 0
        xs = inputs(rng, model.input_shape[1:], int8_interface, in_scale, in_zp)
        ys, qs, logits, traced, n_ops, codes = run_tflm(data, xs)
        base = os.path.join(out_dir, name)
        open(base + ".tflite", "wb").write(data)
        np.concatenate([x.reshape(-1) for x in xs]).tofile(base + ".input.bin")
        ys.reshape(-1).tofile(base + ".output.bin")
        logits.reshape(-1).tofile(base + ".logits.bin")
        with open(base + ".tensors.txt", "w") as f:
            for i, t in traced[0]:
                f.write(f"{i} {t.size}\n")
        np.concatenate([t for tr in traced for _, t in tr]).tofile(base + ".tensors.bin")
        if qs is not None:
            qs.reshape(-1).tofile(base + ".output_q.bin")
        print(
            f"{name}: {len(data)} bytes, {n_ops} ops (builtin codes {', '.join(codes)}), "
            f"{len(xs)} inputs {xs[0].dtype} {xs[0].shape}, outputs {ys.dtype} {ys.shape}; "
            f"tensorflow {tf.__version__}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
