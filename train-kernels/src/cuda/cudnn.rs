//! cuDNN convolution (forward, backward-data, backward-filter) and training-mode batch-norm with
//! shuffle-BN groups, for the project's custom ops on CUDA f32 tensors (feature `cudnn`).
//!
//! Why: candle 0.11 uses cuDNN only for the conv *forward* (rebuilding descriptors, re-querying
//! the algorithm and allocating a workspace on every call); its input gradient is a naive
//! `conv_transpose2d` kernel and its weight gradient a conv whose kernel is the non-contiguous
//! transposed output gradient, which also falls back to a naive kernel. Batch-norm in training
//! mode was ~20 small tensor ops per BN group plus `narrow`/`cat`.
//!
//! Here, per thread and device ([`DevState`]): one cuDNN handle bound to the device's stream,
//! descriptors and heuristically chosen algorithms cached per convolution shape (PyTorch's
//! default, `cudnn.benchmark = False`, also takes cuDNN's heuristic choice), and one persistent
//! workspace that only grows. Batch-norm calls `cudnnBatchNormalizationForwardTraining` /
//! `Backward` once per BN group on slices of one input/output buffer.

use std::cell::RefCell;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::cudnn::{
    result as cdr, sys as cds, ConvBackwardData, ConvBackwardFilter, ConvDescriptor, ConvForward,
    Cudnn, FilterDescriptor, TensorDescriptor,
};
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaStream, CudaView, DevicePtr, DevicePtrMut,
};
use candle_core::cuda_backend::{CudaDevice, DeviceId, WrapErr};
use candle_core::op::BackpropOp;
use candle_core::{
    bail, CpuStorage, CudaStorage, CustomOp3, DType, Device, Layout, Result, Shape, Storage, Tensor,
};

use super::f32_view;
use crate::conv::Geom;

/// cuDNN's status as a candle error.
fn check(s: cds::cudnnStatus_t, what: &str) -> Result<()> {
    s.result()
        .map_err(|e| candle_core::Error::Msg(format!("cuDNN {what}: {e:?}")))
}

/// A raw cuDNN handle (the batch-norm calls go through `sys`; the safe `Cudnn` keeps its raw
/// handle private).
struct RawHandle(cds::cudnnHandle_t);

impl RawHandle {
    fn new(stream: &CudaStream) -> Result<Self> {
        stream.context().bind_to_thread().w()?;
        let h = cdr::create_handle()?;
        let raw = RawHandle(h);
        // SAFETY: fresh handle, the stream outlives it (DevState holds the Arc).
        unsafe { cdr::set_stream(raw.0, stream.cu_stream() as cds::cudaStream_t) }?;
        Ok(raw)
    }
}

impl Drop for RawHandle {
    fn drop(&mut self) {
        // SAFETY: created by create_handle, destroyed once.
        let _ = unsafe { cdr::destroy_handle(self.0) };
    }
}

/// A raw f32 NCHW tensor descriptor.
struct RawDesc(cds::cudnnTensorDescriptor_t);

impl RawDesc {
    fn nchw(dims: [usize; 4]) -> Result<Self> {
        let d = RawDesc(cdr::create_tensor_descriptor()?);
        let dims = dims.map(|v| v as i32);
        // SAFETY: descriptor just created.
        unsafe {
            cdr::set_tensor4d_descriptor(
                d.0,
                cds::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
                cds::cudnnDataType_t::CUDNN_DATA_FLOAT,
                dims,
            )
        }?;
        Ok(d)
    }
}

impl Drop for RawDesc {
    fn drop(&mut self) {
        // SAFETY: created by create_tensor_descriptor, destroyed once.
        let _ = unsafe { cdr::destroy_tensor_descriptor(self.0) };
    }
}

type FwdAlgo = cds::cudnnConvolutionFwdAlgo_t;
type BwdDataAlgo = cds::cudnnConvolutionBwdDataAlgo_t;
type BwdFilterAlgo = cds::cudnnConvolutionBwdFilterAlgo_t;

/// Descriptors of one convolution shape (the same four serve all three directions) and the
/// algorithm + workspace bytes of each direction, chosen on first use.
struct Plan {
    conv: ConvDescriptor<f32>,
    x: TensorDescriptor<f32>,
    w: FilterDescriptor<f32>,
    y: TensorDescriptor<f32>,
    fwd: Option<(FwdAlgo, usize)>,
    bwd_data: Option<(BwdDataAlgo, usize)>,
    bwd_filter: Option<(BwdFilterAlgo, usize)>,
}

impl Plan {
    fn new(cudnn: &Arc<Cudnn>, g: &Geom, tf32: bool) -> Result<Plan> {
        let i = |v: usize| v as i32;
        let mut conv = cudnn.create_conv2d::<f32>(
            [i(g.pad), i(g.pad)],
            [i(g.stride), i(g.stride)],
            [1, 1],
            cds::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
        )?;
        conv.set_math_type(if tf32 {
            cds::cudnnMathType_t::CUDNN_DEFAULT_MATH
        } else {
            cds::cudnnMathType_t::CUDNN_FMA_MATH
        })?;
        let nchw = cds::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
        Ok(Plan {
            x: cudnn.create_4d_tensor::<f32>(nchw, [i(g.n), i(g.c_in), i(g.h), i(g.w)])?,
            w: cudnn.create_4d_filter::<f32>(nchw, [i(g.c_out), i(g.c_in), i(g.kh), i(g.kw)])?,
            y: cudnn.create_4d_tensor::<f32>(nchw, [i(g.n), i(g.c_out), i(g.ho), i(g.wo)])?,
            conv,
            fwd: None,
            bwd_data: None,
            bwd_filter: None,
        })
    }
}

/// Per-thread, per-device cuDNN state (cuDNN handles are not thread-safe; candle keeps its own
/// the same way).
struct DevState {
    stream: Arc<CudaStream>,
    cudnn: Arc<Cudnn>,
    bn: RawHandle,
    /// One workspace for every cuDNN call of this device and thread; grows, never shrinks.
    workspace: Option<CudaSlice<u8>>,
    plans: HashMap<(Geom, bool), Plan>,
    /// Batch-norm descriptors by per-group shape: (x/y, per-channel scale/bias/stats).
    bn_descs: HashMap<[usize; 4], (RawDesc, RawDesc)>,
}

thread_local! {
    static STATE: RefCell<HashMap<DeviceId, DevState>> = RefCell::new(HashMap::new());
}

fn with_state<R>(dev: &CudaDevice, f: impl FnOnce(&mut DevState) -> Result<R>) -> Result<R> {
    STATE.with(|cell| {
        let mut map = cell.borrow_mut();
        let st = match map.entry(dev.id()) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let stream = dev.cuda_stream();
                e.insert(DevState {
                    cudnn: Cudnn::new(stream.clone())?,
                    bn: RawHandle::new(&stream)?,
                    stream,
                    workspace: None,
                    plans: HashMap::new(),
                    bn_descs: HashMap::new(),
                })
            }
        };
        f(st)
    })
}

/// The workspace, at least `bytes` long (`None` when no workspace is needed and none exists).
fn workspace<'a>(
    ws: &'a mut Option<CudaSlice<u8>>,
    stream: &Arc<CudaStream>,
    bytes: usize,
) -> Result<Option<&'a mut CudaSlice<u8>>> {
    if bytes > 0 && ws.as_ref().is_none_or(|w| w.len() < bytes) {
        // Frees the old one first (stream-ordered, so pending users are unaffected); 1/8 slack so
        // that slightly larger later requests do not reallocate.
        *ws = None;
        // SAFETY: cuDNN treats the workspace as scratch; its content is never read uninitialised.
        *ws = Some(unsafe { stream.alloc::<u8>(bytes + bytes / 8) }.w()?);
    }
    Ok(ws.as_mut())
}

fn plan<'a>(
    plans: &'a mut HashMap<(Geom, bool), Plan>,
    cudnn: &Arc<Cudnn>,
    g: &Geom,
) -> Result<&'a mut Plan> {
    let key = (*g, super::tf32_enabled());
    Ok(match plans.entry(key) {
        Entry::Occupied(e) => e.into_mut(),
        Entry::Vacant(e) => e.insert(Plan::new(cudnn, g, key.1)?),
    })
}

/// cuDNN's heuristic algorithm for a convolution op (PyTorch's default) and the workspace bytes
/// it needs: each cudarc op type has the two methods, but no trait in common.
trait Choose {
    type Algo: Copy;
    fn choose(&self) -> Result<(Self::Algo, usize)>;
}

macro_rules! choose_by_heuristic {
    ($($op:ident => $algo:ty),*) => {$(
        impl Choose for $op<'_, f32, f32, f32> {
            type Algo = $algo;
            fn choose(&self) -> Result<($algo, usize)> {
                let a = self.pick_algorithm()?;
                Ok((a, self.get_workspace_size(a)?))
            }
        }
    )*};
}

choose_by_heuristic!(
    ConvForward => FwdAlgo,
    ConvBackwardData => BwdDataAlgo,
    ConvBackwardFilter => BwdFilterAlgo
);

/// One operand of a convolution direction: its storage, layout and name (for errors).
type Operand<'a> = (&'a CudaStorage, &'a Layout, &'static str);

/// Runs one direction of the convolution `g` on its cached [`Plan`], reading the operands `a`
/// and `b` into a new f32 buffer of `out_len` elements. The three directions differ only in
/// which cuDNN op they build from the plan's descriptors, the plan slot that caches the op's
/// algorithm and workspace size (`slot`, filled by `choose` on first use), and the order in
/// which their op takes the buffers (`launch`, given the plan, the algorithm, the workspace,
/// `a`, `b` and the output).
fn run_direction<A: Copy>(
    g: &Geom,
    (a, al, an): Operand<'_>,
    (b, bl, bn): Operand<'_>,
    out_len: usize,
    slot: fn(&mut Plan) -> &mut Option<(A, usize)>,
    choose: impl FnOnce(&Plan) -> Result<(A, usize)>,
    launch: impl FnOnce(
        &Plan,
        A,
        Option<&mut CudaSlice<u8>>,
        &CudaView<'_, f32>,
        &CudaView<'_, f32>,
        &mut CudaSlice<f32>,
    ) -> Result<()>,
) -> Result<CudaStorage> {
    let dev = a.device().clone();
    let av = f32_view(a, al, an)?;
    let bv = f32_view(b, bl, bn)?;
    // SAFETY: fully written by the convolution (beta = 0).
    let mut out = unsafe { dev.alloc::<f32>(out_len)? };
    with_state(&dev, |st| {
        let p = plan(&mut st.plans, &st.cudnn, g)?;
        let (algo, bytes) = match *slot(p) {
            Some(a) => a,
            None => {
                let a = choose(p)?;
                *slot(p) = Some(a);
                a
            }
        };
        let ws = workspace(&mut st.workspace, &st.stream, bytes)?;
        launch(p, algo, ws, &av, &bv, &mut out)
    })?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}

impl Plan {
    fn forward(&self) -> ConvForward<'_, f32, f32, f32> {
        ConvForward {
            conv: &self.conv,
            x: &self.x,
            w: &self.w,
            y: &self.y,
        }
    }

    fn backward_data(&self) -> ConvBackwardData<'_, f32, f32, f32> {
        ConvBackwardData {
            conv: &self.conv,
            dx: &self.x,
            w: &self.w,
            dy: &self.y,
        }
    }

    fn backward_filter(&self) -> ConvBackwardFilter<'_, f32, f32, f32> {
        ConvBackwardFilter {
            conv: &self.conv,
            x: &self.x,
            dw: &self.w,
            dy: &self.y,
        }
    }
}

/// `y = conv2d(x, w)`; `x` `(n, C_in, H, W)` and `w` `(C_out, C_in, kh, kw)` contiguous f32.
pub(crate) fn conv_forward(
    g: &Geom,
    x: &CudaStorage,
    xl: &Layout,
    w: &CudaStorage,
    wl: &Layout,
) -> Result<CudaStorage> {
    run_direction(
        g,
        (x, xl, "conv input"),
        (w, wl, "conv weight"),
        g.n * g.c_out * g.ho * g.wo,
        |p| &mut p.fwd,
        |p| p.forward().choose(),
        |p, algo, ws, x, w, y| {
            // SAFETY: the views and y have exactly the descriptors' shapes, f32, contiguous.
            unsafe { p.forward().launch(algo, ws, (1f32, 0f32), x, w, y) }?;
            Ok(())
        },
    )
}

/// `dx` of the conv with geometry `g` from the output gradient `dy` and the weight `w`.
pub(crate) fn conv_input_grad(
    g: &Geom,
    dy: &CudaStorage,
    dyl: &Layout,
    w: &CudaStorage,
    wl: &Layout,
) -> Result<CudaStorage> {
    run_direction(
        g,
        (dy, dyl, "conv output gradient"),
        (w, wl, "conv weight"),
        g.n * g.c_in * g.h * g.w,
        |p| &mut p.bwd_data,
        |p| p.backward_data().choose(),
        |p, algo, ws, dy, w, dx| {
            // SAFETY: shapes match the descriptors, f32, contiguous.
            unsafe { p.backward_data().launch(algo, ws, (1f32, 0f32), dx, w, dy) }?;
            Ok(())
        },
    )
}

/// `dw` of the conv with geometry `g` from its input `x` and the output gradient `dy`.
pub(crate) fn conv_weight_grad(
    g: &Geom,
    x: &CudaStorage,
    xl: &Layout,
    dy: &CudaStorage,
    dyl: &Layout,
) -> Result<CudaStorage> {
    run_direction(
        g,
        (x, xl, "conv input"),
        (dy, dyl, "conv output gradient"),
        g.c_out * g.c_in * g.kh * g.kw,
        |p| &mut p.bwd_filter,
        |p| p.backward_filter().choose(),
        |p, algo, ws, x, dy, dw| {
            // SAFETY: shapes match the descriptors, f32, contiguous.
            unsafe {
                p.backward_filter()
                    .launch(algo, ws, (1f32, 0f32), x, dw, dy)
            }?;
            Ok(())
        },
    )
}

// ---------------------------------------------------------------------------------------------
// Batch-norm (training mode) over `groups` equal contiguous sub-batches.
// ---------------------------------------------------------------------------------------------

/// What the forward leaves for the backward: per group and channel, cuDNN's saved mean and
/// inverse standard deviation, `(groups, C)` each.
struct BnSaved {
    mean: CudaSlice<f32>,
    inv_std: CudaSlice<f32>,
}

/// What the forward leaves for the caller: the mean over groups of each group's batch mean and
/// of its *unbiased* variance (`(C,)` each) — exactly `trainer::model::ops::BatchStats`.
struct BnStats {
    mean: CudaSlice<f32>,
    var_unbiased: CudaSlice<f32>,
}

/// `apply_op3(x, gamma, beta)`: training-mode BN of each of `groups` contiguous sub-batches of
/// `x` with its own statistics, shared `gamma`/`beta`.
struct GroupedBn {
    groups: usize,
    eps: f64,
    saved: Arc<Mutex<Option<BnSaved>>>,
    stats: Arc<Mutex<Option<BnStats>>>,
}

/// `apply_op3_no_bwd(x, gamma, dy)` → flat `[dx, dgamma (C), dbeta (C)]` (the CPU op's layout).
struct GroupedBnGrad {
    groups: usize,
    eps: f64,
    saved: Arc<Mutex<Option<BnSaved>>>,
}

fn nchw(l: &Layout) -> Result<[usize; 4]> {
    match l.dims() {
        &[n, c, h, w] => Ok([n, c, h, w]),
        d => bail!("kernels::cuda batch-norm: input must be 4-D NCHW, got shape {d:?}"),
    }
}

fn check_c(l: &Layout, c: usize, what: &str) -> Result<()> {
    if l.dims() != [c] {
        bail!(
            "kernels::cuda batch-norm: {what} must have shape [{c}], got {:?}",
            l.dims()
        );
    }
    Ok(())
}

/// Per-group geometry: (per-group dims, elements per group).
fn group_dims(d: [usize; 4], groups: usize) -> Result<([usize; 4], usize)> {
    let [n, c, h, w] = d;
    if groups == 0 || n % groups != 0 {
        bail!("kernels::cuda batch-norm: batch {n} not divisible into {groups} groups");
    }
    let per = n / groups;
    Ok(([per, c, h, w], per * c * h * w))
}

fn bn_descs(
    descs: &mut HashMap<[usize; 4], (RawDesc, RawDesc)>,
    gd: [usize; 4],
) -> Result<&(RawDesc, RawDesc)> {
    Ok(match descs.entry(gd) {
        Entry::Occupied(e) => e.into_mut(),
        Entry::Vacant(e) => e.insert((RawDesc::nchw(gd)?, RawDesc::nchw([1, gd[1], 1, 1])?)),
    })
}

/// Device address as the `void*` cuDNN takes, `off` f32 elements in.
fn at(base: u64, off: usize) -> *mut c_void {
    (base + (off * std::mem::size_of::<f32>()) as u64) as *mut c_void
}

const BN_MODE: cds::cudnnBatchNormMode_t = cds::cudnnBatchNormMode_t::CUDNN_BATCHNORM_SPATIAL;

impl CustomOp3 for GroupedBn {
    fn name(&self) -> &'static str {
        "ht-cudnn-bn-train"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        bail!("ht-cudnn-bn-train is CUDA-only")
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let d = nchw(l1)?;
        let c = d[1];
        check_c(l2, c, "gamma")?;
        check_c(l3, c, "beta")?;
        let (gd, per_elems) = group_dims(d, self.groups)?;
        let dev = s1.device().clone();
        let x = f32_view(s1, l1, "batch-norm input")?;
        let gamma = f32_view(s2, l2, "gamma")?;
        let beta = f32_view(s3, l3, "beta")?;
        let stream = dev.cuda_stream();
        // SAFETY: y and the saved statistics are fully written by cuDNN.
        let mut y = unsafe { dev.alloc::<f32>(per_elems * self.groups)? };
        let mut save_mean = unsafe { dev.alloc::<f32>(self.groups * c)? };
        let mut save_inv = unsafe { dev.alloc::<f32>(self.groups * c)? };
        // Zeroed: the first group's running update is 0·old + 1·new, and 0·NaN would be NaN.
        let mut run_mean = dev.alloc_zeros::<f32>(c)?;
        let mut run_var = dev.alloc_zeros::<f32>(c)?;
        with_state(&dev, |st| {
            let (xd, pd) = bn_descs(&mut st.bn_descs, gd)?;
            let (xp, _gx) = x.device_ptr(&stream);
            let (gp, _gg) = gamma.device_ptr(&stream);
            let (bp, _gb) = beta.device_ptr(&stream);
            let (yp, _gy) = y.device_ptr_mut(&stream);
            let (mp, _gm) = save_mean.device_ptr_mut(&stream);
            let (ip, _gi) = save_inv.device_ptr_mut(&stream);
            let (rmp, _grm) = run_mean.device_ptr_mut(&stream);
            let (rvp, _grv) = run_var.device_ptr_mut(&stream);
            let (one, zero) = (1f32, 0f32);
            for gi in 0..self.groups {
                // Running update with factor 1/(g+1) makes run_mean/run_var the running *mean*
                // over groups of each group's batch mean / unbiased variance.
                let factor = 1.0 / (gi as f64 + 1.0);
                // SAFETY: every pointer addresses a live f32 buffer of the descriptor's size at
                // the given offset; all work is ordered on the handle's stream.
                let s = unsafe {
                    cds::cudnnBatchNormalizationForwardTraining(
                        st.bn.0,
                        BN_MODE,
                        &one as *const f32 as *const c_void,
                        &zero as *const f32 as *const c_void,
                        xd.0,
                        at(xp, gi * per_elems),
                        xd.0,
                        at(yp, gi * per_elems),
                        pd.0,
                        at(gp, 0),
                        at(bp, 0),
                        factor,
                        at(rmp, 0),
                        at(rvp, 0),
                        self.eps,
                        at(mp, gi * c),
                        at(ip, gi * c),
                    )
                };
                check(s, "BatchNormalizationForwardTraining")?;
            }
            Ok(())
        })?;
        *self.saved.lock().expect("bn saved") = Some(BnSaved {
            mean: save_mean,
            inv_std: save_inv,
        });
        *self.stats.lock().expect("bn stats") = Some(BnStats {
            mean: run_mean,
            var_unbiased: run_var,
        });
        Ok((
            CudaStorage::wrap_cuda_slice(y, dev),
            Shape::from(d.to_vec()),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (_, c, _, _) = x.dims4()?;
        let op = GroupedBnGrad {
            groups: self.groups,
            eps: self.eps,
            saved: self.saved.clone(),
        };
        let packed = x.apply_op3_no_bwd(gamma, &grad.contiguous()?, &op)?;
        let nx = x.elem_count();
        let dx = packed.narrow(0, 0, nx)?.reshape(x.dims())?;
        let dgamma = packed.narrow(0, nx, c)?;
        let dbeta = packed.narrow(0, nx + c, c)?;
        Ok((Some(dx), Some(dgamma), Some(dbeta)))
    }
}

impl CustomOp3 for GroupedBnGrad {
    fn name(&self) -> &'static str {
        "ht-cudnn-bn-train-grad"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        bail!("ht-cudnn-bn-train-grad is CUDA-only")
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let d = nchw(l1)?;
        let c = d[1];
        check_c(l2, c, "gamma")?;
        if l3.dims() != l1.dims() {
            bail!(
                "kernels::cuda batch-norm grad: gradient shape {:?} != input {:?}",
                l3.dims(),
                l1.dims()
            );
        }
        let (gd, per_elems) = group_dims(d, self.groups)?;
        let nx = per_elems * self.groups;
        let dev = s1.device().clone();
        let x = f32_view(s1, l1, "batch-norm input")?;
        let gamma = f32_view(s2, l2, "gamma")?;
        let dy = f32_view(s3, l3, "batch-norm output gradient")?;
        let stream = dev.cuda_stream();
        let saved = self.saved.lock().expect("bn saved");
        let Some(saved) = saved.as_ref() else {
            bail!("kernels::cuda batch-norm grad: the forward's statistics are missing");
        };
        // SAFETY: dx fully written (betaDataDiff = 0); dgamma/dbeta by group 0 (betaParamDiff =
        // 0), then accumulated.
        let mut out = unsafe { dev.alloc::<f32>(nx + 2 * c)? };
        with_state(&dev, |st| {
            let (xd, pd) = bn_descs(&mut st.bn_descs, gd)?;
            let (xp, _gx) = x.device_ptr(&stream);
            let (gp, _gg) = gamma.device_ptr(&stream);
            let (dyp, _gdy) = dy.device_ptr(&stream);
            let (mp, _gm) = saved.mean.device_ptr(&stream);
            let (ip, _gi) = saved.inv_std.device_ptr(&stream);
            let (op, _go) = out.device_ptr_mut(&stream);
            let (one, zero) = (1f32, 0f32);
            for gi in 0..self.groups {
                let beta_param: &f32 = if gi == 0 { &zero } else { &one };
                // SAFETY: as in the forward; dgamma/dbeta are the last 2·C floats of `out`.
                let s = unsafe {
                    cds::cudnnBatchNormalizationBackward(
                        st.bn.0,
                        BN_MODE,
                        &one as *const f32 as *const c_void,
                        &zero as *const f32 as *const c_void,
                        &one as *const f32 as *const c_void,
                        beta_param as *const f32 as *const c_void,
                        xd.0,
                        at(xp, gi * per_elems),
                        xd.0,
                        at(dyp, gi * per_elems),
                        xd.0,
                        at(op, gi * per_elems),
                        pd.0,
                        at(gp, 0),
                        at(op, nx),
                        at(op, nx + c),
                        self.eps,
                        at(mp, gi * c),
                        at(ip, gi * c),
                    )
                };
                check(s, "BatchNormalizationBackward")?;
            }
            Ok(())
        })?;
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev),
            Shape::from(nx + 2 * c),
        ))
    }
}

/// Output of [`batch_norm_train_grouped`].
pub struct GroupedBnOut {
    pub y: Tensor,
    /// Mean over groups of the per-group batch means, `(C,)`, detached.
    pub mean: Tensor,
    /// Mean over groups of the per-group *unbiased* variances, `(C,)`, detached.
    pub var_unbiased: Tensor,
}

/// Training-mode batch-norm of `x` over `groups` equal contiguous sub-batches through cuDNN, when
/// `x`, `gamma`, `beta` are f32 on a CUDA device; `None` otherwise (the caller's own path runs).
/// Shape checks (divisibility, more than one value per channel and group) are the caller's.
pub fn batch_norm_train_grouped(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    groups: usize,
    eps: f64,
) -> Result<Option<GroupedBnOut>> {
    let Device::Cuda(cuda) = x.device() else {
        return Ok(None);
    };
    if [x.dtype(), gamma.dtype(), beta.dtype()]
        .iter()
        .any(|d| *d != DType::F32)
    {
        return Ok(None);
    }
    let stats = Arc::new(Mutex::new(None));
    let op = GroupedBn {
        groups,
        eps,
        saved: Arc::new(Mutex::new(None)),
        stats: stats.clone(),
    };
    let y = x
        .contiguous()?
        .apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)?;
    let Some(st) = stats.lock().expect("bn stats").take() else {
        bail!("kernels::cuda batch-norm: the forward left no statistics");
    };
    let c = x.dim(1)?;
    let wrap = |s: CudaSlice<f32>| {
        Tensor::from_storage(
            Storage::Cuda(CudaStorage::wrap_cuda_slice(s, cuda.clone())),
            c,
            BackpropOp::none(),
            false,
        )
    };
    Ok(Some(GroupedBnOut {
        y,
        mean: wrap(st.mean),
        var_unbiased: wrap(st.var_unbiased),
    }))
}
