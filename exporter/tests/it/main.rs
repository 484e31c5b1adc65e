//! exporter's integration tests, one binary: the fixtures regenerate byte for byte, ONNX exports run in onnxruntime as in runtime-core, TFLite exports run in TFLite Micro bit for bit as in runtime-core.
mod fixtures;
mod onnx_runtime;
mod tflite_in;
mod tflite_litert;
mod tflite_micro;
mod tflite_mlperf;
