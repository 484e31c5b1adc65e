//! Fast CPU training kernels for candle, plugged in behind one function per op.
//!
//! Why this module exists: candle 0.11's CPU *backward* of `conv2d` is several times slower than
//! its forward (naive `conv_transpose2d` for the input gradient, a whole-output-map "kernel"
//! conv for the weight gradient), which made a ResNet-18 training step unusably slow on CPU.
//! The profile and the measured speed-ups are in `README.md` next to this file.
//!
//! Dispatch rule: CPU + f32 → our custom op; CUDA + f32 with the `cudnn` feature → the same
//! custom op, whose `cuda_fwd`s call cuDNN ([`cuda::cudnn`]); anything else (CUDA without cuDNN,
//! other dtypes) → candle's own `Tensor::conv2d`.
//!
//! Determinism: every reduction runs in an order fixed by the tensor shapes alone (see
//! [`conv`]), so CPU results are bit-identical for any number of rayon threads.

pub mod batchnorm;
pub mod conv;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod direct;

pub use batchnorm::{
    batch_norm_train, batch_norm_train_grouped, batch_norm_train_tail, BatchNormTrain, BnTail,
    GroupedBatchNormTrain,
};

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Result, Tensor};

/// Process-wide switch between these kernels and candle's own CPU ops. Only benchmarks turn it
/// off (`host-trainer bench-step --baseline`), to measure the speed-up against candle's ops in
/// the same process; training always runs with it on.
static CPU_KERNELS: AtomicBool = AtomicBool::new(true);

/// Use these kernels (`true`, the default) or candle's own ops (`false`) on the CPU.
pub fn set_cpu_kernels(enabled: bool) {
    CPU_KERNELS.store(enabled, Ordering::Relaxed);
}

/// Whether CPU f32 tensors go through these kernels.
pub fn cpu_kernels_enabled() -> bool {
    CPU_KERNELS.load(Ordering::Relaxed)
}

/// [`cuda::gpu_kernels_enabled`] where CUDA is compiled in.
fn gpu_kernels_on() -> bool {
    #[cfg(feature = "cuda")]
    {
        cuda::gpu_kernels_enabled()
    }
    #[cfg(not(feature = "cuda"))]
    {
        false
    }
}

/// 2-D convolution, NCHW input `x`, OIHW weight `w`, groups 1, dilation 1, no bias.
///
/// Same semantics as `x.conv2d(w, padding, stride, 1, 1)`; on the CPU with f32 tensors the
/// forward and both gradients run as direct convolutions ([`direct`]; im2col/col2im + GEMM for
/// what those do not cover) behind [`conv::Conv2dOp`].
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    if cpu_kernels_enabled()
        && x.device().is_cpu()
        && x.dtype() == DType::F32
        && w.dtype() == DType::F32
    {
        x.apply_op2(w, conv::Conv2dOp { stride, padding })
    } else if cfg!(feature = "cudnn")
        && gpu_kernels_on()
        && x.device().is_cuda()
        && x.dtype() == DType::F32
        && w.dtype() == DType::F32
    {
        // cuDNN forward and backward-data/backward-filter (kernels::cuda::cudnn), which read
        // dense NCHW/OIHW.
        x.contiguous()?
            .apply_op2(&w.contiguous()?, conv::Conv2dOp { stride, padding })
    } else {
        x.conv2d(w, padding, stride, 1, 1)
    }
}

/// An activation-sized output buffer, not zeroed (every element is written before
/// [`assume_init`]; zeroing it first would be a pass over memory for nothing).
pub(crate) fn uninit(len: usize) -> Vec<MaybeUninit<f32>> {
    let mut v = Vec::with_capacity(len);
    // SAFETY: `MaybeUninit<f32>` needs no initialisation; the length stays within capacity.
    unsafe { v.set_len(len) };
    v
}

/// `v` as plain floats. Callers guarantee that every element was written.
pub(crate) fn assume_init(v: Vec<MaybeUninit<f32>>) -> Vec<f32> {
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: every element was written (the callers' loops cover each index of the buffer);
    // same allocation, length and capacity, and `MaybeUninit<f32>` has the layout of `f32`.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr().cast::<f32>(), v.len(), v.capacity()) }
}
