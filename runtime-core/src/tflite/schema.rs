//! The parts of TFLite's flatbuffers schema (`tensorflow/lite/schema/schema.fbs`) this crate
//! reads and the exporter writes: builtin operator codes, option-union tags, enum values and the
//! field ids of each table. One definition for the reader ([`super`]) and the writer
//! (`exporter::export::tflite`).
/// `enum BuiltinOperator`.
pub mod op {
    pub const ADD: i32 = 0;
    pub const AVERAGE_POOL_2D: i32 = 1;
    pub const DEPTHWISE_CONV_2D: i32 = 4;
    pub const DEQUANTIZE: i32 = 6;
    pub const SOFTMAX: i32 = 25;
    pub const QUANTIZE: i32 = 114;
    pub const CONV_2D: i32 = 3;
    pub const FULLY_CONNECTED: i32 = 9;
    pub const MAX_POOL_2D: i32 = 17;
    pub const RESHAPE: i32 = 22;
    pub const PAD: i32 = 34;
    pub const MEAN: i32 = 40;
    pub const PADV2: i32 = 60;
    pub const LEAKY_RELU: i32 = 98;
    /// `deprecated_builtin_code` for codes above 126 (`PLACEHOLDER_FOR_GREATER_OP_CODES`).
    pub const PLACEHOLDER_FOR_GREATER_OP_CODES: i32 = 127;
}
/// `union BuiltinOptions` tags.
pub mod options {
    pub const NONE: u8 = 0;
    pub const CONV_2D: u8 = 1;
    pub const DEPTHWISE_CONV_2D: u8 = 2;
    pub const POOL_2D: u8 = 5;
    pub const FULLY_CONNECTED: u8 = 8;
    pub const ADD: u8 = 11;
    pub const RESHAPE: u8 = 17;
    pub const PAD: u8 = 22;
    pub const REDUCER: u8 = 27;
    pub const PADV2: u8 = 43;
    pub const LEAKY_RELU: u8 = 75;
    pub const SOFTMAX: u8 = 9;
}
/// `enum TensorType`.
pub const FLOAT32: i8 = 0;
pub const INT32: i8 = 2;
pub const INT8: i8 = 9;
/// `enum Padding`.
pub const SAME: i8 = 0;
pub const VALID: i8 = 1;
/// `enum ActivationFunctionType`.
pub const ACT_NONE: i8 = 0;
pub const ACT_RELU: i8 = 1;
pub const ACT_RELU6: i8 = 3;

/// The vtable slot of field id `i`.
pub const fn slot(i: u16) -> u16 {
    4 + 2 * i
}
/// `table Model`: version 0, operator_codes 1, subgraphs 2, description 3, buffers 4,
/// metadata_buffer 5, metadata 6.
pub mod model {
    pub const VERSION: u16 = 0;
    pub const OPERATOR_CODES: u16 = 1;
    pub const SUBGRAPHS: u16 = 2;
    pub const DESCRIPTION: u16 = 3;
    pub const BUFFERS: u16 = 4;
    pub const METADATA: u16 = 6;
}
/// `table OperatorCode`: deprecated_builtin_code 0 (byte), custom_code 1, version 2,
/// builtin_code 3 (int).
pub mod operator_code {
    pub const DEPRECATED_BUILTIN_CODE: u16 = 0;
    pub const VERSION: u16 = 2;
    pub const BUILTIN_CODE: u16 = 3;
}
/// `table SubGraph`: tensors 0, inputs 1, outputs 2, operators 3, name 4.
pub mod subgraph {
    pub const TENSORS: u16 = 0;
    pub const INPUTS: u16 = 1;
    pub const OUTPUTS: u16 = 2;
    pub const OPERATORS: u16 = 3;
    pub const NAME: u16 = 4;
}
/// `table Buffer`: data 0.
pub mod buffer {
    pub const DATA: u16 = 0;
}
/// `table Metadata`: name 0, buffer 1.
pub mod metadata {
    pub const NAME: u16 = 0;
    pub const BUFFER: u16 = 1;
}
/// `table Tensor`: shape 0, type 1, buffer 2, name 3, quantization 4.
pub mod tensor {
    pub const SHAPE: u16 = 0;
    pub const TYPE: u16 = 1;
    pub const BUFFER: u16 = 2;
    pub const NAME: u16 = 3;
    pub const QUANTIZATION: u16 = 4;
}
/// `table QuantizationParameters`: min 0, max 1, scale 2, zero_point 3, details 4–5
/// (union), quantized_dimension 6.
pub mod quantization {
    pub const SCALE: u16 = 2;
    pub const ZERO_POINT: u16 = 3;
    pub const QUANTIZED_DIMENSION: u16 = 6;
}
/// `table Operator`: opcode_index 0, inputs 1, outputs 2, builtin_options 3–4 (union:
/// type 3, value 4).
pub mod operator {
    pub const OPCODE_INDEX: u16 = 0;
    pub const INPUTS: u16 = 1;
    pub const OUTPUTS: u16 = 2;
    pub const BUILTIN_OPTIONS_TYPE: u16 = 3;
    pub const BUILTIN_OPTIONS: u16 = 4;
}
/// `table Conv2DOptions`: padding 0, stride_w 1, stride_h 2, fused_activation_function 3
/// (dilations 4, 5 default 1). `table Pool2DOptions`: padding 0, stride_w 1, stride_h 2,
/// filter_width 3, filter_height 4, fused_activation_function 5.
/// `table DepthwiseConv2DOptions`: padding 0, stride_w 1, stride_h 2, depth_multiplier 3,
/// fused_activation_function 4, dilation_w_factor 5, dilation_h_factor 6 (default 1).
/// `table FullyConnectedOptions`: fused_activation_function 0, weights_format 1,
/// keep_num_dims 2. `table AddOptions`: fused_activation_function 0.
/// `table ReducerOptions`: keep_dims 0. `table LeakyReluOptions`: alpha 0.
/// `table ReshapeOptions`: new_shape 0. `table SoftmaxOptions`: beta 0 (float, default 0). `PadOptions`, `PadV2Options`: no fields.
pub mod opts {}
