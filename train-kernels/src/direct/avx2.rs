//! AVX2 + FMA kernels. Each lane runs exactly the FMA chain of the portable kernel for its
//! element (see the parent module), so results are bit-identical to [`super::portable`].

use super::{portable, Flat, FWD_R, LANES};
use std::arch::x86_64::*;

fn available() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// [`portable::conv_planes`] with 4 output channels × 2 vectors of positions per register
/// tile (8 accumulators: with 3 vectors LLVM spills an accumulator to the stack, which puts a
/// store-forwarding round trip into that FMA chain); also fills garbage positions.
pub(super) fn conv_planes(fl: &Flat, buf: &[f32], wp: &[f32], rows: usize, flat_out: &mut [f32]) {
    let k = fl.offs.len();
    if !available() {
        return portable::conv_planes(fl, buf, wp, rows, flat_out);
    }
    // Bounds for the raw reads/writes below: every tap read of a computed position lies below
    // buf_len (Flat's invariant), the packed weights hold rows·k floats, the output rows·qpad.
    assert!(buf.len() >= fl.buf_len && wp.len() >= rows * k && flat_out.len() >= rows * fl.qpad);
    assert!(rows.is_multiple_of(FWD_R) && fl.qpad.is_multiple_of(LANES));
    assert!(fl.offs.iter().all(|&o| o + fl.qpad <= fl.buf_len));
    // SAFETY: AVX2+FMA checked above; bounds as asserted.
    unsafe {
        for b in 0..rows / FWD_R {
            let wb = wp.as_ptr().add(b * k * FWD_R);
            let out = flat_out.as_mut_ptr().add(b * FWD_R * fl.qpad);
            let mut q0 = 0;
            while q0 + 2 * LANES <= fl.qpad {
                fwd_tile::<2>(buf.as_ptr(), &fl.offs, wb, q0, out, fl.qpad);
                q0 += 2 * LANES;
            }
            while q0 < fl.qpad {
                fwd_tile::<1>(buf.as_ptr(), &fl.offs, wb, q0, out, fl.qpad);
                q0 += LANES;
            }
        }
    }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn fwd_tile<const V: usize>(
    buf: *const f32,
    offs: &[usize],
    wb: *const f32,
    q0: usize,
    out: *mut f32,
    qpad: usize,
) {
    let mut acc = [[_mm256_setzero_ps(); V]; FWD_R];
    for (t, &off) in offs.iter().enumerate() {
        let p = buf.add(off + q0);
        let mut xv = [_mm256_setzero_ps(); V];
        for (v, x) in xv.iter_mut().enumerate() {
            *x = _mm256_loadu_ps(p.add(LANES * v));
        }
        let wt = wb.add(t * FWD_R);
        for (r, a) in acc.iter_mut().enumerate() {
            let wv = _mm256_broadcast_ss(&*wt.add(r));
            for v in 0..V {
                a[v] = _mm256_fmadd_ps(xv[v], wv, a[v]);
            }
        }
    }
    for (r, a) in acc.iter().enumerate() {
        for (v, x) in a.iter().enumerate() {
            _mm256_storeu_ps(out.add(r * qpad + q0 + LANES * v), *x);
        }
    }
}

/// [`portable::weight_grad_image`], vectorised over output channels: register tiles of
/// 2 vectors × 6 taps or 1 vector × 12 taps (12 accumulators), remainders by 3 and 1 taps.
pub(super) fn weight_grad_image(fl: &Flat, buf: &[f32], dyt: &[f32], co8: usize, acc: &mut [f32]) {
    if !available() {
        return portable::weight_grad_image(fl, buf, dyt, co8, acc);
    }
    let k = fl.offs.len();
    assert!(co8.is_multiple_of(LANES) && acc.len() >= k * co8);
    assert!(dyt.len() >= fl.ho * fl.wo * co8 && buf.len() >= fl.buf_len);
    assert!(fl.offs.iter().all(|&o| o + fl.qpad <= fl.buf_len));
    let nvec = co8 / LANES;
    // SAFETY: AVX2+FMA checked above; reads of valid positions lie below offs + qpad ≤ buf_len,
    // dyt reads below ho·wo·co8, acc writes below k·co8.
    unsafe {
        let mut ov = 0;
        while ov < nvec {
            if nvec - ov >= 2 {
                wg_taps::<2, 6>(fl, buf, dyt, co8, ov, acc);
                ov += 2;
            } else {
                wg_taps::<1, 12>(fl, buf, dyt, co8, ov, acc);
                ov += 1;
            }
        }
    }
}

/// All taps for output-channel vectors `ov..ov+RO`: tiles of `T` taps, then 3, then 1.
#[target_feature(enable = "avx2,fma")]
unsafe fn wg_taps<const RO: usize, const T: usize>(
    fl: &Flat,
    buf: &[f32],
    dyt: &[f32],
    co8: usize,
    ov: usize,
    acc: &mut [f32],
) {
    let k = fl.offs.len();
    let mut t0 = 0;
    while t0 + T <= k {
        wg_tile::<RO, T>(fl, buf, dyt, co8, ov, t0, acc);
        t0 += T;
    }
    while t0 + 3 <= k {
        wg_tile::<RO, 3>(fl, buf, dyt, co8, ov, t0, acc);
        t0 += 3;
    }
    while t0 < k {
        wg_tile::<RO, 1>(fl, buf, dyt, co8, ov, t0, acc);
        t0 += 1;
    }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn wg_tile<const RO: usize, const T: usize>(
    fl: &Flat,
    buf: &[f32],
    dyt: &[f32],
    co8: usize,
    ov: usize,
    t0: usize,
    acc: &mut [f32],
) {
    let mut s = [[_mm256_setzero_ps(); T]; RO];
    let mut xp = [buf.as_ptr(); T];
    for (tt, p) in xp.iter_mut().enumerate() {
        *p = buf.as_ptr().add(fl.offs[t0 + tt]);
    }
    let d0 = dyt.as_ptr().add(ov * LANES);
    for oy in 0..fl.ho {
        let xrow = oy * fl.wq;
        let drow = d0.add(oy * fl.wo * co8);
        for ox in 0..fl.wo {
            let mut d = [_mm256_setzero_ps(); RO];
            for (r, dv) in d.iter_mut().enumerate() {
                *dv = _mm256_loadu_ps(drow.add(ox * co8 + r * LANES));
            }
            for tt in 0..T {
                let xv = _mm256_broadcast_ss(&*xp[tt].add(xrow + ox));
                for r in 0..RO {
                    s[r][tt] = _mm256_fmadd_ps(d[r], xv, s[r][tt]);
                }
            }
        }
    }
    for (r, sr) in s.iter().enumerate() {
        for (tt, v) in sr.iter().enumerate() {
            let p = acc.as_mut_ptr().add((t0 + tt) * co8 + (ov + r) * LANES);
            _mm256_storeu_ps(p, _mm256_add_ps(_mm256_loadu_ps(p), *v));
        }
    }
}
