//! CUDA side of the training kernels (features `cuda` / `cudnn`; issue "GPU pretraining at
//! PyTorch speed"). Nothing here is compiled into the default (CPU) build.
//!
//! * [`configure_device`]: what a training process does once per GPU — one dedicated stream,
//!   cudarc's per-allocation event tracking off, the memory pool's release threshold raised so
//!   that freed activations stay cached between steps (PyTorch's caching allocator behaves so).
//! * [`sgd_momentum_step`] and [`ema_update`]: the optimiser's and MoCo's key-encoder updates as
//!   one or two fused element-wise kernels per parameter instead of ~11 candle ops each. The
//!   kernels are CUDA C compiled at run time by NVRTC (through candle's own cudarc) the first
//!   time they are used, so nothing is compiled for the GPU at build time.
//! * [`cudnn`] (feature `cudnn`): convolution forward / backward-data / backward-filter and
//!   training-mode batch-norm (shuffle-BN groups inside) through cuDNN.
//!
//! TF32: PyTorch lets cuDNN use TF32 tensor cores for f32 convolutions by default
//! (`torch.backends.cudnn.allow_tf32 = True`, math type `CUDNN_DEFAULT_MATH`) but not cuBLAS
//! matmuls (`torch.backends.cuda.matmul.allow_tf32 = False`). The same here: convolutions use
//! TF32 unless [`set_tf32`]`(false)` or `HOST_TRAINER_TF32=0` (`CUDNN_FMA_MATH`, full f32, what
//! the exactness tests use); candle's matmuls stay full f32.
//!
//! Everything here is written against candle 0.11.1's cudarc re-export
//! (`candle_core::cuda_backend::cudarc`), so the cudarc version always matches candle's.

#[cfg(feature = "cudnn")]
pub mod cudnn;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    self as cu, CudaFunction, CudaStream, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDevice, DeviceId, WrapErr};
use candle_core::{bail, CpuStorage, CudaStorage, DType, Device, InplaceOp2, InplaceOp3, Layout};
use candle_core::{Result, Tensor};

/// Process-wide switch between these GPU kernels and candle's own CUDA ops, like
/// [`super::set_cpu_kernels`] on the CPU: `bench-step --baseline` turns it off to time the
/// "before" in the same process; `HOST_TRAINER_GPU_KERNELS=0` turns it off for a whole run (a
/// way around a kernel that misbehaves on some GPU). 0 = not yet read, 1 = off, 2 = on.
static GPU_KERNELS: AtomicU8 = AtomicU8::new(0);

/// Use these kernels on CUDA tensors (`true`, the default) or candle's own ops (`false`).
pub fn set_gpu_kernels(enabled: bool) {
    GPU_KERNELS.store(if enabled { 2 } else { 1 }, Ordering::Relaxed);
}

/// Whether CUDA f32 tensors go through these kernels: [`set_gpu_kernels`], else
/// `HOST_TRAINER_GPU_KERNELS` (`0` = off), else on.
pub fn gpu_kernels_enabled() -> bool {
    match GPU_KERNELS.load(Ordering::Relaxed) {
        1 => false,
        2 => true,
        _ => {
            let on = env_flag("HOST_TRAINER_GPU_KERNELS", true);
            set_gpu_kernels(on);
            on
        }
    }
}

/// A boolean environment switch: `0` is off, `1` on, unset (or anything else) `default`.
fn env_flag(name: &str, default: bool) -> bool {
    match std::env::var(name).as_deref().map(str::trim) {
        Ok("0") => false,
        Ok("1") => true,
        _ => default,
    }
}

/// 0 = not yet read from the environment, 1 = off, 2 = on.
static TF32: AtomicU8 = AtomicU8::new(0);

/// Let cuDNN convolutions use TF32 tensor cores (PyTorch's default) or not (full f32).
pub fn set_tf32(enabled: bool) {
    TF32.store(if enabled { 2 } else { 1 }, Ordering::Relaxed);
}

/// Whether cuDNN convolutions may use TF32: [`set_tf32`], else `HOST_TRAINER_TF32` (`0` = off),
/// else on.
pub fn tf32_enabled() -> bool {
    match TF32.load(Ordering::Relaxed) {
        1 => false,
        2 => true,
        _ => {
            let on = env_flag("HOST_TRAINER_TF32", true);
            set_tf32(on);
            on
        }
    }
}

/// A CUDA device set up for training: its own stream (every candle op, cuDNN call and kernel of
/// this process is ordered on it), event tracking off, the memory pool keeping freed blocks.
///
/// Event tracking (cudarc records and waits on two CUDA events per buffer use so that buffers can
/// move between streams) is pure overhead when everything runs on one stream; candle documents
/// turning it off as safe under exactly that condition. `HOST_TRAINER_EVENT_TRACKING=1` keeps it
/// on (for debugging a suspected race).
pub fn new_training_device(ordinal: usize) -> Result<Device> {
    let dev = Device::new_cuda_with_stream(ordinal)?;
    configure_device(&dev)?;
    Ok(dev)
}

/// See [`new_training_device`]; a no-op on the CPU. Affects only buffers allocated afterwards.
pub fn configure_device(dev: &Device) -> Result<()> {
    let Device::Cuda(cd) = dev else {
        return Ok(());
    };
    if !env_flag("HOST_TRAINER_EVENT_TRACKING", false) {
        // SAFETY: the device was created with its own stream and this process issues all its
        // work for it on that one stream (candle's ops, cuDNN through handles bound to it, the
        // kernels below), which is the condition candle states for disabling tracking.
        unsafe { cd.disable_event_tracking() };
    }
    set_pool_release_threshold(cd)
}

/// Raise the release threshold of the device's default memory pool (cudarc allocates with
/// `cuMemAllocAsync`) from 0 to "never": with 0 the driver returns freed memory to the OS at each
/// synchronisation and re-maps it in the next step.
fn set_pool_release_threshold(cd: &CudaDevice) -> Result<()> {
    use cu::sys;
    let stream = cd.cuda_stream();
    let ctx = stream.context();
    ctx.bind_to_thread().w()?;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    // SAFETY: plain driver calls on the bound context with valid out-pointers.
    unsafe {
        let r = sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device());
        if r != sys::CUresult::CUDA_SUCCESS {
            // No memory-pool support (old driver): cudarc then allocates synchronously.
            return Ok(());
        }
        let mut threshold: u64 = u64::MAX;
        let r = sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            &mut threshold as *mut u64 as *mut std::ffi::c_void,
        );
        if r != sys::CUresult::CUDA_SUCCESS {
            bail!("cuMemPoolSetAttribute(RELEASE_THRESHOLD) failed: {r:?}");
        }
    }
    Ok(())
}

/// The element-wise update kernels. `__fmul_rn`/`__fadd_rn` stop the compiler from contracting
/// into FMAs, so each result rounds exactly like the CPU path's separate candle ops.
const UPDATE_KERNELS: &str = r#"
extern "C" __global__ void ht_ema(float* k, const float* q, unsigned long long n, float m, float one_minus_m) {
    unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (; i < n; i += stride) {
        k[i] = __fadd_rn(__fmul_rn(k[i], m), __fmul_rn(q[i], one_minus_m));
    }
}

// buf <- first ? d : momentum*buf + (1-dampening)*d,  d = g + wd*p
extern "C" __global__ void ht_sgd_buf(float* buf, const float* p, const float* g, unsigned long long n,
                                      float wd, float momentum, float one_minus_damp, int first) {
    unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (; i < n; i += stride) {
        float d = __fadd_rn(g[i], __fmul_rn(p[i], wd));
        buf[i] = first ? d : __fadd_rn(__fmul_rn(buf[i], momentum), __fmul_rn(d, one_minus_damp));
    }
}

// p <- p - lr * (nesterov ? d + momentum*buf : buf),  d = g + wd*p
extern "C" __global__ void ht_sgd_param(float* p, const float* buf, const float* g, unsigned long long n,
                                        float wd, float momentum, float lr, int nesterov) {
    unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (; i < n; i += stride) {
        float step = buf[i];
        if (nesterov) {
            float d = __fadd_rn(g[i], __fmul_rn(p[i], wd));
            step = __fadd_rn(d, __fmul_rn(buf[i], momentum));
        }
        p[i] = __fsub_rn(p[i], __fmul_rn(step, lr));
    }
}
"#;

/// Name of the NVRTC module in candle's per-device custom-module store.
const UPDATE_MODULE: &str = "host_trainer_updates";

/// NVRTC output of [`UPDATE_KERNELS`], compiled once per process.
fn update_ptx() -> Result<&'static str> {
    static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    PTX.get_or_init(|| {
        compile_update_kernels().map_err(|e| {
            // Said once; the callers then fall back to candle's tensor ops ([`is_cuda_f32`]).
            eprintln!("warning: {e}; SGD and EMA fall back to candle's tensor ops");
            e.to_string()
        })
    })
    .as_deref()
    .map_err(|e| candle_core::Error::Msg(format!("NVRTC: {e}")))
}

/// Compile the update kernels with NVRTC (needs `libnvrtc`, no GPU): also what the GPU-less test
/// `nvrtc_compiles_update_kernels` checks.
pub fn compile_update_kernels() -> Result<String> {
    let ptx = candle_core::cuda_backend::cudarc::nvrtc::compile_ptx(UPDATE_KERNELS)
        .map_err(|e| candle_core::Error::Msg(format!("NVRTC failed on the update kernels: {e}")))?;
    Ok(ptx.to_src())
}

/// Loaded functions by (device, name): candle's `get_or_load_custom_func` looks the function up in
/// the module on every call; here that happens once.
fn function(dev: &CudaDevice, name: &'static str) -> Result<CudaFunction> {
    static FUNCS: OnceLock<Mutex<HashMap<(DeviceId, &'static str), CudaFunction>>> =
        OnceLock::new();
    let funcs = FUNCS.get_or_init(Default::default);
    if let Some(f) = funcs.lock().expect("kernel table").get(&(dev.id(), name)) {
        return Ok(f.clone());
    }
    let f = dev
        .get_or_load_custom_func(name, UPDATE_MODULE, update_ptx()?)?
        .into_cuda_function();
    funcs
        .lock()
        .expect("kernel table")
        .insert((dev.id(), name), f.clone());
    Ok(f)
}

/// Grid for a grid-stride loop over `n` elements.
fn grid(n: usize) -> LaunchConfig {
    const THREADS: u32 = 256;
    // Enough blocks to fill an H100/H200 (132 SMs × 8 blocks of 256) without one block per element.
    let blocks = n.div_ceil(THREADS as usize).clamp(1, 132 * 8) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn stream_of(dev: &CudaDevice) -> Arc<CudaStream> {
    dev.cuda_stream()
}

/// The contiguous f32 elements of a storage/layout pair as a view, or an error naming `what`.
pub(crate) fn f32_view<'a>(
    s: &'a CudaStorage,
    l: &Layout,
    what: &str,
) -> Result<cu::CudaView<'a, f32>> {
    let Some((a, b)) = l.contiguous_offsets() else {
        bail!(
            "kernels::cuda: {what} must be contiguous (shape {:?}, stride {:?})",
            l.dims(),
            l.stride()
        );
    };
    Ok(s.as_cuda_slice::<f32>()?.slice(a..b))
}

/// θk ← m·θk + (1−m)·θq in place on `k` (`apply` of MoCo's key-encoder momentum update).
struct EmaOp {
    m: f32,
    one_minus_m: f32,
}

impl InplaceOp2 for EmaOp {
    fn name(&self) -> &'static str {
        "ht-ema"
    }

    fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<()> {
        bail!("ht-ema is CUDA-only; the CPU runs method::ema's tensor ops")
    }

    fn cuda_fwd(
        &self,
        k: &mut CudaStorage,
        kl: &Layout,
        q: &CudaStorage,
        ql: &Layout,
    ) -> Result<()> {
        let n = kl.shape().elem_count();
        if ql.shape().elem_count() != n {
            bail!("ht-ema: shapes differ ({:?} vs {:?})", kl.dims(), ql.dims());
        }
        let dev = k.device().clone();
        let func = function(&dev, "ht_ema")?;
        let stream = stream_of(&dev);
        let q = f32_view(q, ql, "EMA source")?;
        let Some((a, b)) = kl.contiguous_offsets() else {
            bail!("ht-ema: the key parameter must be contiguous");
        };
        let mut k = k.as_cuda_slice_mut::<f32>()?.slice_mut(a..b);
        let n64 = n as u64;
        let mut builder = stream.launch_builder(&func);
        builder
            .arg(&mut k)
            .arg(&q)
            .arg(&n64)
            .arg(&self.m)
            .arg(&self.one_minus_m);
        // SAFETY: argument list matches ht_ema's signature; both views hold n f32.
        unsafe { builder.launch(grid(n)) }.w()?;
        Ok(())
    }
}

/// Whether `t` is an f32 tensor on a CUDA device (and [`gpu_kernels_enabled`], and the update
/// kernels compiled): what the fused updates handle. Should NVRTC fail (a missing
/// `libnvrtc-builtins`, say), training goes on with candle's ops after one warning.
pub fn is_cuda_f32(t: &Tensor) -> bool {
    gpu_kernels_enabled() && t.device().is_cuda() && t.dtype() == DType::F32 && update_ptx().is_ok()
}

/// θk ← m·θk + (1−m)·θq in place, one kernel. Both tensors f32, same shape, on the same GPU.
pub fn ema_update(k: &Tensor, q: &Tensor, m: f64) -> Result<()> {
    if k.dims() != q.dims() {
        bail!(
            "EMA update: shapes differ ({:?} vs {:?})",
            k.dims(),
            q.dims()
        );
    }
    let q = q.contiguous()?;
    k.inplace_op2(
        &q,
        &EmaOp {
            m: m as f32,
            one_minus_m: (1.0 - m) as f32,
        },
    )
}

/// `buf ← first ? d : momentum·buf + (1−dampening)·d`, `d = g + wd·p`, in place on `buf`.
struct SgdBufOp {
    wd: f32,
    momentum: f32,
    one_minus_damp: f32,
    first: bool,
}

/// `p ← p − lr·(nesterov ? d + momentum·buf : buf)`, in place on `p`.
struct SgdParamOp {
    wd: f32,
    momentum: f32,
    lr: f32,
    nesterov: bool,
}

fn check_same_len(n: usize, ls: &[&Layout], what: &str) -> Result<()> {
    for l in ls {
        if l.shape().elem_count() != n {
            bail!("{what}: operand shapes differ ({:?})", l.dims());
        }
    }
    Ok(())
}

impl InplaceOp3 for SgdBufOp {
    fn name(&self) -> &'static str {
        "ht-sgd-buf"
    }

    fn cpu_fwd(
        &self,
        _: &mut CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<()> {
        bail!("ht-sgd-buf is CUDA-only")
    }

    fn cuda_fwd(
        &self,
        buf: &mut CudaStorage,
        bl: &Layout,
        p: &CudaStorage,
        pl: &Layout,
        g: &CudaStorage,
        gl: &Layout,
    ) -> Result<()> {
        let n = bl.shape().elem_count();
        check_same_len(n, &[pl, gl], "ht-sgd-buf")?;
        let dev = buf.device().clone();
        let func = function(&dev, "ht_sgd_buf")?;
        let stream = stream_of(&dev);
        let p = f32_view(p, pl, "parameter")?;
        let g = f32_view(g, gl, "gradient")?;
        let Some((a, b)) = bl.contiguous_offsets() else {
            bail!("ht-sgd-buf: the momentum buffer must be contiguous");
        };
        let mut buf = buf.as_cuda_slice_mut::<f32>()?.slice_mut(a..b);
        let (n64, first) = (n as u64, i32::from(self.first));
        let mut builder = stream.launch_builder(&func);
        builder
            .arg(&mut buf)
            .arg(&p)
            .arg(&g)
            .arg(&n64)
            .arg(&self.wd)
            .arg(&self.momentum)
            .arg(&self.one_minus_damp)
            .arg(&first);
        // SAFETY: argument list matches ht_sgd_buf's signature; all views hold n f32.
        unsafe { builder.launch(grid(n)) }.w()?;
        Ok(())
    }
}

impl InplaceOp3 for SgdParamOp {
    fn name(&self) -> &'static str {
        "ht-sgd-param"
    }

    fn cpu_fwd(
        &self,
        _: &mut CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<()> {
        bail!("ht-sgd-param is CUDA-only")
    }

    fn cuda_fwd(
        &self,
        p: &mut CudaStorage,
        pl: &Layout,
        buf: &CudaStorage,
        bl: &Layout,
        g: &CudaStorage,
        gl: &Layout,
    ) -> Result<()> {
        let n = pl.shape().elem_count();
        check_same_len(n, &[bl, gl], "ht-sgd-param")?;
        let dev = p.device().clone();
        let func = function(&dev, "ht_sgd_param")?;
        let stream = stream_of(&dev);
        let buf = f32_view(buf, bl, "momentum buffer")?;
        let g = f32_view(g, gl, "gradient")?;
        let Some((a, b)) = pl.contiguous_offsets() else {
            bail!("ht-sgd-param: the parameter must be contiguous");
        };
        let mut p = p.as_cuda_slice_mut::<f32>()?.slice_mut(a..b);
        let (n64, nesterov) = (n as u64, i32::from(self.nesterov));
        let mut builder = stream.launch_builder(&func);
        builder
            .arg(&mut p)
            .arg(&buf)
            .arg(&g)
            .arg(&n64)
            .arg(&self.wd)
            .arg(&self.momentum)
            .arg(&self.lr)
            .arg(&nesterov);
        // SAFETY: argument list matches ht_sgd_param's signature; all views hold n f32.
        unsafe { builder.launch(grid(n)) }.w()?;
        Ok(())
    }
}

/// One PyTorch SGD-with-momentum update of `p` in place (two kernels: buffer, then parameter).
///
/// `buf` is the parameter's momentum buffer: `None` on its first step, when a fresh buffer is
/// allocated and returned (PyTorch: `buf = d_p`, no dampening); afterwards it is updated in place
/// and must not share storage with anything else (the optimiser owns it). Requires
/// `momentum > 0`; `p`, `g` and `buf` f32 on the same GPU.
#[allow(clippy::too_many_arguments)]
pub fn sgd_momentum_step(
    p: &Tensor,
    g: &Tensor,
    buf: Option<&Tensor>,
    lr: f64,
    momentum: f64,
    dampening: f64,
    weight_decay: f64,
    nesterov: bool,
) -> Result<Tensor> {
    if p.dims() != g.dims() {
        bail!(
            "SGD: gradient shape {:?} != parameter {:?}",
            g.dims(),
            p.dims()
        );
    }
    let g = g.contiguous()?;
    let (buf, first) = match buf {
        Some(b) => (b.clone(), false),
        None => (p.zeros_like()?, true),
    };
    buf.inplace_op3(
        p,
        &g,
        &SgdBufOp {
            wd: weight_decay as f32,
            momentum: momentum as f32,
            one_minus_damp: (1.0 - dampening) as f32,
            first,
        },
    )?;
    p.inplace_op3(
        &buf,
        &g,
        &SgdParamOp {
            wd: weight_decay as f32,
            momentum: momentum as f32,
            lr: lr as f32,
            nesterov,
        },
    )?;
    Ok(buf)
}
