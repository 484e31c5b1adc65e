//! The portable kernels: plain loops with `f32::mul_add` in exactly the order the vector kernels
//! use per lane (see the parent module), so they are the bit-exact oracle for them.

use super::{Flat, FWD_R};

/// `flat_out[o][q] = Σ_t buf[offs[t] + q] · w[o][t]` (FMA chain over taps from 0) for the
/// valid positions `q = oy·wq + ox`, `ox < wo`; garbage positions are left as they are.
pub(super) fn conv_planes(fl: &Flat, buf: &[f32], wp: &[f32], rows: usize, flat_out: &mut [f32]) {
    let k = fl.offs.len();
    for o in 0..rows {
        let (b, r) = (o / FWD_R, o % FWD_R);
        let wb = &wp[b * k * FWD_R..(b + 1) * k * FWD_R];
        for oy in 0..fl.ho {
            for ox in 0..fl.wo {
                let q = oy * fl.wq + ox;
                let mut acc = 0f32;
                for (t, &off) in fl.offs.iter().enumerate() {
                    acc = buf[off + q].mul_add(wb[t * FWD_R + r], acc);
                }
                flat_out[o * fl.qpad + q] = acc;
            }
        }
    }
}

/// One image's weight-gradient sums added into `acc[t][o]`: for each (tap, channel) an FMA
/// chain over the output positions in row-major order from 0, then one add.
pub(super) fn weight_grad_image(fl: &Flat, buf: &[f32], dyt: &[f32], co8: usize, acc: &mut [f32]) {
    for (t, &off) in fl.offs.iter().enumerate() {
        for o in 0..co8 {
            let mut s = 0f32;
            for oy in 0..fl.ho {
                for ox in 0..fl.wo {
                    let d = dyt[(oy * fl.wo + ox) * co8 + o];
                    s = d.mul_add(buf[off + oy * fl.wq + ox], s);
                }
            }
            acc[t * co8 + o] += s;
        }
    }
}
