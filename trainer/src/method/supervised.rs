//! Supervised pretraining: cross-entropy over the dataset's labels (object class or face
//! identity), plus top-1 accuracy for logging.
use candle_core::{bail, DType, Result, Tensor};

/// Check labels against the number of classes and upload them as u32 (what `cross_entropy`'s
/// gather wants). Out-of-range labels are a clear error, not an out-of-bounds gather.
fn label_tensor(
    labels: &[i64],
    b: usize,
    classes: usize,
    device: &candle_core::Device,
) -> Result<Tensor> {
    if labels.len() != b {
        bail!(
            "supervised loss: {} labels for a batch of {b}",
            labels.len()
        );
    }
    if let Some(bad) = labels.iter().find(|&&l| l < 0 || l as usize >= classes) {
        bail!("supervised loss: label {bad} outside 0..{classes}");
    }
    let v: Vec<u32> = labels.iter().map(|&l| l as u32).collect();
    Tensor::from_vec(v, b, device)
}

/// Mean cross-entropy of `logits` [B, C] against `labels` (each in 0..C).
pub fn supervised_loss(logits: &Tensor, labels: &[i64]) -> Result<Tensor> {
    let (b, c) = logits.dims2()?;
    let t = label_tensor(labels, b, c, logits.device())?;
    candle_nn::loss::cross_entropy(logits, &t)
}

/// Fraction of rows whose arg-max logit is the label.
pub fn top1_accuracy(logits: &Tensor, labels: &[i64]) -> Result<f32> {
    let (b, c) = logits.dims2()?;
    let t = label_tensor(labels, b, c, logits.device())?;
    let pred = logits.detach().argmax(1)?;
    pred.eq(&t)?
        .to_dtype(DType::F32)?
        .mean_all()?
        .to_scalar::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn cross_entropy_on_hand_values() {
        let dev = Device::Cpu;
        let logits = Tensor::new(&[[1f32, 2.0, 3.0], [0.0, 0.0, 0.0]], &dev).unwrap();
        let got = supervised_loss(&logits, &[2, 0])
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        let l0 = -(3f64.exp() / (1f64.exp() + 2f64.exp() + 3f64.exp())).ln();
        let l1 = 3f64.ln();
        assert!((got - (l0 + l1) / 2.0).abs() < 1e-6, "{got}");
        assert_eq!(
            top1_accuracy(
                &Tensor::new(&[[1f32, 2.0, 3.0], [5.0, 0.0, 0.0]], &dev).unwrap(),
                &[2, 1]
            )
            .unwrap(),
            0.5
        );
        let e = supervised_loss(&logits, &[3, 0]).unwrap_err().to_string();
        assert!(e.contains("label 3 outside 0..3"), "{e}");
        assert!(supervised_loss(&logits, &[-1, 0]).is_err());
        assert!(supervised_loss(&logits, &[1]).is_err());
    }
}
