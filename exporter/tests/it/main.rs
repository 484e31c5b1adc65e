//! exporter's integration tests, one binary: the fixtures regenerate byte for byte, ONNX exports run in onnxruntime as in runtime-core.
mod fixtures;
mod onnx_runtime;
