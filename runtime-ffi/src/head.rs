//! Few-shot heads fitted on the device from a handful of labelled embeddings.
//!
//! Which runtime-core heads, and why: the heap-backed [`LinearHead`] and [`CentroidHead`]. The
//! fixed-capacity twins (`LinearClassifier<W, D>`, `NearestCentroid<W, D>`) fix the class count
//! and feature dimension at compile time, which a C library built once for every model cannot
//! do, and the linear one's fit keeps `3·W·D` floats on the stack (48 KiB for 8 classes of 512
//! features), more than many firmware task stacks. A heap is needed anyway (model loading
//! allocates), so the heads take theirs at fit time and never again: scoring does not allocate.
//! Both flavours run the same code in runtime-core, so the results are bit-identical.

use core::mem::{align_of, size_of};

use runtime_core::heads::centroid::CentroidHead;
use runtime_core::heads::linear::{LinearHead, SgdRecipe};

use crate::{byte_range, check_disjoint, check_ptr, slice_mut, slice_ref, status, RtStatus};

/// Size of `rt_head`'s opaque storage in 8-byte words (compile-time checked, with slack).
pub const RT_HEAD_STORAGE_WORDS: usize = 16;

/// `magic` of a fitted head ("RTH1").
const HEAD_MAGIC: u32 = 0x5254_4831;

/// A few-shot head, in memory the caller owns. Zero-initialise it (`rt_head h = {0};`), fit it
/// with `rt_head_fit_linear` or `rt_head_fit_centroid`, release it with `rt_head_release`. Do not
/// copy a fitted head: pass pointers to it.
#[repr(C)]
pub struct RtHead {
    /// Private: `"RTH1"` while fitted, 0 otherwise.
    magic: u32,
    /// Private: the runtime-core head.
    storage: [u64; RT_HEAD_STORAGE_WORDS],
}

/// A zeroed, not fitted head (what `rt_head h = {0};` gives in C).
impl Default for RtHead {
    fn default() -> Self {
        RtHead {
            magic: 0,
            storage: [0; RT_HEAD_STORAGE_WORDS],
        }
    }
}

/// What lives in [`RtHead::storage`].
enum Head {
    Linear(LinearHead),
    Centroid(CentroidHead),
}

const _: () = assert!(size_of::<Head>() <= size_of::<[u64; RT_HEAD_STORAGE_WORDS]>());
const _: () = assert!(align_of::<Head>() <= align_of::<u64>());

/// The SGD recipe of `rt_head_fit_linear`. `rt_sgd_recipe_default()` gives the paper's few-shot
/// protocol (Chen et al. 2019): lr 0.01, momentum 0.9, dampening 0.9, weight decay 0.001, 100
/// epochs, batch 4.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RtSgdRecipe {
    pub lr: f32,
    pub momentum: f32,
    pub dampening: f32,
    pub weight_decay: f32,
    /// Passes over the support set (each in a fresh random order).
    pub epochs: u32,
    /// Mini-batch size (the last batch of an epoch may be shorter); at least 1.
    pub batch: u32,
}

impl From<RtSgdRecipe> for SgdRecipe {
    fn from(r: RtSgdRecipe) -> Self {
        SgdRecipe {
            lr: r.lr,
            momentum: r.momentum,
            dampening: r.dampening,
            weight_decay: r.weight_decay,
            epochs: r.epochs as usize,
            batch: r.batch as usize,
        }
    }
}

/// The paper's few-shot SGD recipe (what runtime-cli's `eval fewshot` and the MCU use).
#[no_mangle]
pub extern "C" fn rt_sgd_recipe_default() -> RtSgdRecipe {
    let d = SgdRecipe::default();
    RtSgdRecipe {
        lr: d.lr,
        momentum: d.momentum,
        dampening: d.dampening,
        weight_decay: d.weight_decay,
        epochs: d.epochs as u32,
        batch: d.batch as u32,
    }
}

/// The fitted head behind a pointer, or why there is none.
///
/// # Safety
/// `h`, if non-NULL and aligned, must point to an `rt_head` (any bytes).
unsafe fn fitted<'h>(h: *const RtHead) -> Result<&'h Head, RtStatus> {
    check_ptr(h, 1)?;
    // SAFETY: non-NULL, aligned; every bit pattern is a valid `RtHead` (integers only).
    let h = unsafe { &*h };
    if h.magic != HEAD_MAGIC {
        return Err(RtStatus::HeadNotFitted);
    }
    // SAFETY: the magic is only set after a `Head` was written there, cleared before it is
    // dropped.
    Ok(unsafe { &*(h.storage.as_ptr() as *const Head) })
}

/// Checks the head handle and the support set, borrows the support set, fits with `fit`, and
/// stores the result.
///
/// # Safety
/// As for `rt_head_fit_linear`.
unsafe fn fit_into(
    head: *mut RtHead,
    features: *const f32,
    features_len: usize,
    labels: *const u8,
    n_samples: usize,
    fit: impl FnOnce(&[f32], &[u8]) -> Result<Head, RtStatus>,
) -> Result<(), RtStatus> {
    check_ptr(head, 1)?;
    check_ptr(features, features_len)?;
    check_ptr(labels, n_samples)?;
    check_disjoint(&[
        byte_range(head, 1),
        byte_range(features, features_len),
        byte_range(labels, n_samples),
    ])?;
    // SAFETY: non-NULL, aligned, not overlapping the inputs; any bit pattern is a valid `RtHead`.
    let h = unsafe { &mut *head };
    if h.magic == HEAD_MAGIC {
        return Err(RtStatus::HandleInUse);
    }
    h.magic = 0;
    // SAFETY: checked above; validity is the caller's contract.
    let (features, labels) = unsafe {
        (
            slice_ref(features, features_len)?,
            slice_ref(labels, n_samples)?,
        )
    };
    let fitted = fit(features, labels)?;
    // SAFETY: size and alignment checked at compile time; no live `Head` is there (magic unset).
    unsafe { core::ptr::write(h.storage.as_mut_ptr() as *mut Head, fitted) };
    h.magic = HEAD_MAGIC;
    Ok(())
}

/// Fits the linear few-shot classifier (`Linear(dim -> n_way)`, cross-entropy, SGD; runtime-core's
/// `LinearHead`, the paper's protocol with `rt_sgd_recipe_default()`) on a support set.
///
/// `features`: `n_samples * dim` floats, row-major (sample `i` is `features[i*dim .. (i+1)*dim]`,
/// e.g. `rt_run_*` outputs of a features model); `labels`: `n_samples` class indices, each
/// `< n_way`, every class present. `seed` fixes the initial weights and the epoch orders: the
/// same inputs and seed give the same head bit for bit. `*head` must be zero-initialised or
/// released (else `RT_STATUS_HANDLE_IN_USE`).
///
/// Allocates the head's `n_way * (dim + 1)` floats (kept until `rt_head_release`) and, freed
/// before returning, `2 * n_way * (dim + 1) + n_way` floats of SGD state and `n_samples` u16.
///
/// # Safety
/// `features` and `labels` must point to the counts given; `recipe` to an `rt_sgd_recipe`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn rt_head_fit_linear(
    head: *mut RtHead,
    features: *const f32,
    features_len: usize,
    labels: *const u8,
    n_samples: usize,
    n_way: usize,
    dim: usize,
    recipe: *const RtSgdRecipe,
    seed: u64,
) -> RtStatus {
    status(|| {
        // SAFETY: checked for NULL and alignment; the caller gives a readable recipe.
        let recipe: SgdRecipe = unsafe { slice_ref(recipe, 1)? }[0].into();
        // SAFETY: the pointer contracts are the caller's; `fit_into` checks what it can.
        unsafe {
            fit_into(head, features, features_len, labels, n_samples, |f, l| {
                Ok(Head::Linear(LinearHead::fit(
                    f, l, n_way, dim, &recipe, seed,
                )?))
            })
        }
    })
}

/// Fits the nearest-centroid head (runtime-core's `CentroidHead`: each class centroid is the
/// mean of its L2-normalised support features; scores are cosine similarities). Arguments as
/// for `rt_head_fit_linear`. Allocates the `n_way * dim` centroid floats, kept until
/// `rt_head_release`.
///
/// # Safety
/// `features` and `labels` must point to the counts given.
#[no_mangle]
pub unsafe extern "C" fn rt_head_fit_centroid(
    head: *mut RtHead,
    features: *const f32,
    features_len: usize,
    labels: *const u8,
    n_samples: usize,
    n_way: usize,
    dim: usize,
) -> RtStatus {
    status(|| {
        // SAFETY: the pointer contracts are the caller's; `fit_into` checks what it can.
        unsafe {
            fit_into(head, features, features_len, labels, n_samples, |f, l| {
                Ok(Head::Centroid(CentroidHead::fit(f, l, n_way, dim)?))
            })
        }
    })
}

/// Class scores of one feature vector (`dim` floats) into `scores[0 .. n_way]`
/// (`scores_len >= n_way`): logits for the linear head, cosine similarities for the centroid
/// head; higher is more likely. Does not allocate.
///
/// # Safety
/// `feature` must point to `feature_len` floats, `scores` to `scores_len` writable floats.
#[no_mangle]
pub unsafe extern "C" fn rt_head_scores(
    head: *const RtHead,
    feature: *const f32,
    feature_len: usize,
    scores: *mut f32,
    scores_len: usize,
) -> RtStatus {
    status(|| {
        // SAFETY: `fitted` checks the pointer; the handle contract is the caller's.
        let h = unsafe { fitted(head)? };
        check_ptr(feature, feature_len)?;
        check_ptr(scores, scores_len)?;
        check_disjoint(&[
            byte_range(head, 1),
            byte_range(feature, feature_len),
            byte_range(scores, scores_len),
        ])?;
        // SAFETY: checked above; validity is the caller's contract.
        let (x, s) = unsafe {
            (
                slice_ref(feature, feature_len)?,
                slice_mut(scores, scores_len)?,
            )
        };
        let n_way = match h {
            Head::Linear(l) => l.n_way(),
            Head::Centroid(c) => c.n_way(),
        };
        if s.len() < n_way {
            return Err(RtStatus::OutputLength);
        }
        match h {
            Head::Linear(l) => l.logits(x, s)?,
            Head::Centroid(c) => c.scores(x, s)?,
        }
        Ok(())
    })
}

/// The predicted class of one feature vector (`dim` floats): the index of the highest score
/// (the first on ties), written to `*class_out`. Does not allocate.
///
/// # Safety
/// `feature` must point to `feature_len` floats, `class_out` to a writable `size_t`.
#[no_mangle]
pub unsafe extern "C" fn rt_head_predict(
    head: *const RtHead,
    feature: *const f32,
    feature_len: usize,
    class_out: *mut usize,
) -> RtStatus {
    status(|| {
        // SAFETY: `fitted` checks the pointer; the handle contract is the caller's.
        let h = unsafe { fitted(head)? };
        check_ptr(feature, feature_len)?;
        check_ptr(class_out, 1)?;
        check_disjoint(&[
            byte_range(head, 1),
            byte_range(feature, feature_len),
            byte_range(class_out, 1),
        ])?;
        // SAFETY: checked above; validity is the caller's contract.
        let x = unsafe { slice_ref(feature, feature_len)? };
        let class = match h {
            Head::Linear(l) => l.predict(x)?,
            Head::Centroid(c) => c.predict(x)?,
        };
        // SAFETY: non-NULL and aligned (checked); the caller gives a writable `size_t`.
        unsafe { class_out.write(class) };
        Ok(())
    })
}

/// Frees what the fit allocated and marks the head not fitted. Releasing a head that is not
/// fitted does nothing and returns `RT_STATUS_OK`.
///
/// # Safety
/// `head` must point to an `rt_head` that no other thread uses during the call.
#[no_mangle]
pub unsafe extern "C" fn rt_head_release(head: *mut RtHead) -> RtStatus {
    status(|| {
        check_ptr(head, 1)?;
        // SAFETY: non-NULL, aligned, any bit pattern is valid.
        let h = unsafe { &mut *head };
        if h.magic != HEAD_MAGIC {
            return Ok(());
        }
        h.magic = 0;
        // SAFETY: the magic said a `Head` lives there; cleared first, so dropped exactly once.
        unsafe { core::ptr::drop_in_place(h.storage.as_mut_ptr() as *mut Head) };
        Ok(())
    })
}
