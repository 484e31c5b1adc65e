//! The momentum (EMA) update of MoCo's key encoder: θk ← m·θk + (1−m)·θq, applied before the key
//! forward pass, outside autograd (the key encoder never receives gradients).
//!
//! Only *parameters* are averaged. MoCo's `_momentum_update_key_encoder` iterates
//! `parameters()`, so the key encoder's BN running mean/var are not EMA'd: they are updated by
//! the key encoder's own train-mode forward passes (on shuffled batches). [`ema_update`]
//! therefore refuses BN buffer names, catching a caller that passes the whole state dict. At
//! initialisation MoCo copies everything, buffers included: that is [`copy_into`].
use candle_core::{bail, Result, Var};

/// Names of BN running buffers (torchvision naming), which must not be EMA'd.
const BUFFER_SUFFIXES: [&str; 3] = ["running_mean", "running_var", "num_batches_tracked"];

fn check_pairs(key: &[(String, Var)], query: &[(String, Var)], what: &str) -> Result<()> {
    if key.len() != query.len() {
        bail!(
            "{what}: key encoder has {} tensors, query encoder {}",
            key.len(),
            query.len()
        );
    }
    for ((kn, kv), (qn, qv)) in key.iter().zip(query) {
        if kn != qn {
            bail!("{what}: names differ pairwise: key '{kn}' vs query '{qn}'");
        }
        if kv.dims() != qv.dims() {
            bail!(
                "{what}: '{kn}' has shape {:?} in the key encoder, {:?} in the query encoder",
                kv.dims(),
                qv.dims()
            );
        }
    }
    Ok(())
}

/// θk ← m·θk + (1−m)·θq for each pair of same-named parameters. `m` in [0, 1].
pub fn ema_update(key: &[(String, Var)], query: &[(String, Var)], m: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&m) {
        bail!("EMA momentum m must be in [0, 1], got {m}");
    }
    check_pairs(key, query, "EMA update")?;
    if let Some((n, _)) = key
        .iter()
        .find(|(n, _)| BUFFER_SUFFIXES.iter().any(|s| n.ends_with(s)))
    {
        bail!(
            "EMA update: '{n}' is a BN buffer; pass parameters only (the key encoder's running \
             statistics follow its own forward passes, as in MoCo)"
        );
    }
    for ((_, k), (_, q)) in key.iter().zip(query) {
        // CUDA f32: one fused in-place kernel per parameter (kernels::cuda::ema_update), same
        // rounding as the ops below.
        #[cfg(feature = "cuda")]
        if crate::kernels::cuda::is_cuda_f32(k) && crate::kernels::cuda::is_cuda_f32(q) {
            crate::kernels::cuda::ema_update(k.as_tensor(), q.as_tensor(), m)?;
            continue;
        }
        let q = q.as_tensor().to_dtype(k.dtype())?;
        let new = (k.as_tensor().affine(m, 0.0)? + q.affine(1.0 - m, 0.0)?)?.detach();
        k.set(&new)?;
    }
    Ok(())
}

/// θk ← θq for every pair (parameters and buffers): the key encoder's initialisation.
pub fn copy_into(key: &[(String, Var)], query: &[(String, Var)]) -> Result<()> {
    check_pairs(key, query, "key encoder copy")?;
    for ((_, k), (_, q)) in key.iter().zip(query) {
        k.set(&q.as_tensor().detach().to_dtype(k.dtype())?.copy()?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    fn var(v: &[f32]) -> Var {
        Var::from_tensor(&Tensor::new(v, &Device::Cpu).unwrap()).unwrap()
    }

    #[test]
    fn ema_on_hand_values() {
        let k = vec![
            ("w".to_string(), var(&[1.0, -2.0])),
            ("b".to_string(), var(&[0.0])),
        ];
        let q = vec![
            ("w".to_string(), var(&[3.0, 2.0])),
            ("b".to_string(), var(&[10.0])),
        ];
        ema_update(&k, &q, 0.9).unwrap();
        // 0.9·1 + 0.1·3 = 1.2; 0.9·(−2) + 0.1·2 = −1.6; 0.1·10 = 1.
        let w = k[0].1.as_tensor().to_vec1::<f32>().unwrap();
        assert!(
            (w[0] - 1.2).abs() < 1e-6 && (w[1] + 1.6).abs() < 1e-6,
            "{w:?}"
        );
        assert!((k[1].1.as_tensor().to_vec1::<f32>().unwrap()[0] - 1.0).abs() < 1e-6);
        // The query encoder is untouched.
        assert_eq!(q[0].1.as_tensor().to_vec1::<f32>().unwrap(), vec![3.0, 2.0]);
        // m = 0.999, twice: θ = 1 + (3−1)(1 − 0.999²) for the first weight.
        let k2 = vec![("w".to_string(), var(&[1.0]))];
        let q2 = vec![("w".to_string(), var(&[3.0]))];
        ema_update(&k2, &q2, 0.999).unwrap();
        ema_update(&k2, &q2, 0.999).unwrap();
        let got = k2[0].1.as_tensor().to_vec1::<f32>().unwrap()[0] as f64;
        assert!((got - (1.0 + 2.0 * (1.0 - 0.999f64.powi(2)))).abs() < 1e-6);
    }

    #[test]
    fn mismatches_and_buffers_are_errors() {
        let k = vec![("a".to_string(), var(&[1.0]))];
        let q = vec![("b".to_string(), var(&[1.0]))];
        assert!(ema_update(&k, &q, 0.9)
            .unwrap_err()
            .to_string()
            .contains("'a' vs query 'b'"));
        let q = vec![("a".to_string(), var(&[1.0, 2.0]))];
        assert!(ema_update(&k, &q, 0.9)
            .unwrap_err()
            .to_string()
            .contains("shape"));
        assert!(ema_update(&k, &[], 0.9).is_err());
        let kb = vec![("bn1.running_mean".to_string(), var(&[1.0]))];
        let qb = vec![("bn1.running_mean".to_string(), var(&[2.0]))];
        assert!(ema_update(&kb, &qb, 0.9)
            .unwrap_err()
            .to_string()
            .contains("BN buffer"));
        copy_into(&kb, &qb).unwrap();
        assert_eq!(kb[0].1.as_tensor().to_vec1::<f32>().unwrap(), vec![2.0]);
        assert!(ema_update(&k, &k, 1.5).is_err());
    }
}
