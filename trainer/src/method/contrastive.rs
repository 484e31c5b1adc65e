//! The InfoNCE loss of MoCo and its Exemplar variant (paper eq. 2), in one function: Exemplar is
//! MoCo whose denominator drops the queue entries that share the query's label.
//!
//! ```text
//! L_i = −log  exp(q_i·k_i/τ) / ( exp(q_i·k_i/τ) + Σ_{j: keep(i,j)} exp(q_i·queue_j/τ) )
//! keep(i,j) = true                                     (MoCo: no labels given)
//!           = queue_label_j == −1  or  queue_label_j ≠ y_i   (Exemplar)
//! ```
//!
//! Normalisation happens *inside* (q and k are L2-normalised here, as MoCo's
//! `nn.functional.normalize(·, dim=1)`), so that a caller cannot forget it; the normalised,
//! detached keys are returned so the same vectors go into the queue. The positive (column 0) is
//! never masked; masked queue columns become −∞ before a log-sum-exp whose max is taken over the
//! kept entries only, so a masked entry neither contributes to the denominator nor can make the
//! kept ones underflow; its gradient is exactly 0.
use candle_core::{bail, DType, Result, Tensor, D};

use super::queue::LabelQueue;

/// The loss of a model that has learnt nothing: −log of 1/(candidates), averaged over the
/// batch, where the candidates of query i are the positive and the queue entries its softmax
/// keeps — `ln(K+1)` for MoCo, `ln(1 + K − #{j: queue_label_j = y_i})` for Exemplar (−1 slots
/// are kept). A run whose loss does not fall well below it has not learnt to discriminate.
pub fn chance_loss(queue_labels: &[i64], exemplar_labels: Option<&[i64]>) -> f64 {
    let k = queue_labels.len();
    match exemplar_labels {
        None => ((k + 1) as f64).ln(),
        Some(ys) if !ys.is_empty() => {
            let sum: f64 = ys
                .iter()
                .map(|&y| {
                    let same = queue_labels.iter().filter(|&&l| l == y).count();
                    ((1 + k - same) as f64).ln()
                })
                .sum();
            sum / ys.len() as f64
        }
        Some(_) => ((k + 1) as f64).ln(),
    }
}

/// What [`contrastive_loss`] returns.
#[derive(Debug, Clone)]
pub struct ContrastiveOutput {
    /// Mean over the batch of L_i (scalar, differentiable w.r.t. q).
    pub loss: Tensor,
    /// [B, 1+K] logits / τ, column 0 the positive, masked queue columns −∞.
    pub logits: Tensor,
    /// The L2-normalised, detached keys [B, d]: enqueue these after the loss.
    pub keys: Tensor,
}

impl ContrastiveOutput {
    /// Top-1 "instance accuracy" for logging: the fraction of queries whose positive logit is
    /// ≥ every kept negative (ties count as correct; with float logits they practically never
    /// occur). Computed on the device; only the scalar is read back.
    pub fn instance_accuracy(&self) -> Result<f32> {
        let logits = self.logits.detach();
        let n = logits.dim(1)?;
        let pos = logits.narrow(1, 0, 1)?;
        if n == 1 {
            return Ok(1.0);
        }
        let best_neg = logits.narrow(1, 1, n - 1)?.max_keepdim(1)?;
        pos.ge(&best_neg)?
            .to_dtype(DType::F32)?
            .mean_all()?
            .to_scalar::<f32>()
    }
}

/// Rows divided by max(‖row‖₂, 1e-12), as `torch.nn.functional.normalize(x, dim=1)`.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::INFINITY)?;
    x.broadcast_div(&norm)
}

/// The eq. 2 mask as a [B, K] u8 tensor on the queue's device: 1 where queue slot j holds the
/// label of query i. Query labels are ≥ 0 (checked by the caller), so −1 slots never match.
fn same_label_mask(
    query_labels: &[i64],
    queue: &LabelQueue,
    device: &candle_core::Device,
) -> Result<Tensor> {
    let ql = Tensor::from_slice(query_labels, (query_labels.len(), 1), device)?;
    let kl = Tensor::from_slice(queue.labels(), (1, queue.len()), device)?;
    ql.broadcast_eq(&kl)
}

/// MoCo (`query_labels = None`) or Exemplar (`Some(labels)`, one per query, each ≥ 0) loss.
///
/// `q`: [B, d] query embeddings (gradients flow into them); `k`: [B, d] key embeddings (detached
/// here — the key encoder is never trained by gradients); `queue`: K negatives of dimension d;
/// `tau` > 0. Cross-entropy with target 0, mean over the batch, computed as a stable
/// log-sum-exp.
pub fn contrastive_loss(
    q: &Tensor,
    k: &Tensor,
    queue: &LabelQueue,
    query_labels: Option<&[i64]>,
    tau: f64,
) -> Result<ContrastiveOutput> {
    let (b, d) = q.dims2()?;
    if k.dims() != q.dims() {
        bail!(
            "contrastive loss: q is {:?} but k is {:?}",
            q.dims(),
            k.dims()
        );
    }
    if d != queue.dim() {
        bail!(
            "contrastive loss: embeddings have dim {d}, queue has dim {}",
            queue.dim()
        );
    }
    if !(tau > 0.0 && tau.is_finite()) {
        bail!("contrastive loss: temperature τ must be > 0, got {tau}");
    }
    if let Some(l) = query_labels {
        if l.len() != b {
            bail!(
                "contrastive loss: {} query labels for a batch of {b}",
                l.len()
            );
        }
        if let Some(bad) = l.iter().find(|&&x| x < 0) {
            bail!("contrastive loss: query label {bad} < 0 (labels must be ≥ 0)");
        }
    }
    let qn = l2_normalize(q)?;
    let kn = l2_normalize(&k.detach())?.detach();
    let queue_keys = queue.keys().to_dtype(q.dtype())?.to_device(q.device())?;
    let l_pos = (&qn * &kn)?.sum_keepdim(1)?; // [B, 1]
    let l_neg = qn.matmul(&queue_keys.t()?)?; // [B, K]
    let mut logits = Tensor::cat(&[&l_pos, &l_neg], 1)?.affine(1.0 / tau, 0.0)?;
    if let Some(labels) = query_labels {
        let same = same_label_mask(labels, queue, q.device())?;
        let never = Tensor::zeros((b, 1), DType::U8, q.device())?; // the positive column
        let mask = Tensor::cat(&[&never, &same], 1)?;
        let neg_inf =
            Tensor::full(f32::NEG_INFINITY, logits.shape(), q.device())?.to_dtype(q.dtype())?;
        logits = mask.where_cond(&neg_inf, &logits)?;
    }
    // log Σ_j exp(l_j) = m + log Σ_j exp(l_j − m), m = max over kept entries (finite: the
    // positive is always kept). m is a constant for autograd: the identity holds for any m.
    let m = logits.max_keepdim(1)?.detach();
    let lse = (logits.broadcast_sub(&m)?.exp()?.sum_keepdim(1)?.log()? + &m)?;
    let loss = (lse - logits.narrow(1, 0, 1)?)?.mean_all()?;
    Ok(ContrastiveOutput {
        loss,
        logits,
        keys: kn,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn normalize_matches_hand_values() {
        let x = Tensor::new(&[[3f32, 4.0], [0.0, 0.0]], &Device::Cpu).unwrap();
        let n = l2_normalize(&x).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(n, vec![vec![0.6, 0.8], vec![0.0, 0.0]]);
    }

    #[test]
    fn accuracy_counts_positive_max() {
        let dev = Device::Cpu;
        let logits =
            Tensor::new(&[[2f32, 1.0, f32::NEG_INFINITY], [0.0, 1.0, -1.0]], &dev).unwrap();
        let out = ContrastiveOutput {
            loss: Tensor::new(0f32, &dev).unwrap(),
            logits,
            keys: Tensor::new(0f32, &dev).unwrap(),
        };
        assert_eq!(out.instance_accuracy().unwrap(), 0.5);
    }

    #[test]
    fn chance_loss_counts_the_candidates_each_softmax_compares() {
        // MoCo, K = 4: ln 5 whatever the labels.
        assert_eq!(chance_loss(&[0, 1, -1, 1], None), 5f64.ln());
        // Exemplar: query labels 1 and 2; queue holds label 1 twice, so query 0 keeps 2 of 4
        // negatives (3 candidates) and query 1 keeps all 4 (5 candidates).
        let c = chance_loss(&[0, 1, -1, 1], Some(&[1, 2]));
        assert!((c - (3f64.ln() + 5f64.ln()) / 2.0).abs() < 1e-12, "{c}");
        // When every logit is equal (queue entries = the positive key), the loss *is* the
        // chance loss: check it against the loss function itself.
        let dev = candle_core::Device::Cpu;
        let v = Tensor::new(&[[1f32, 0.0], [1.0, 0.0]], &dev).unwrap();
        let mut queue = LabelQueue::new(4, 2, 0, &dev).unwrap();
        queue.enqueue(&v, Some(&[1, 1])).unwrap();
        queue.enqueue(&v, Some(&[0, 3])).unwrap();
        for ys in [None, Some(&[1i64, 2][..])] {
            let out = contrastive_loss(&v, &v, &queue, ys, 0.2).unwrap();
            let loss = f64::from(out.loss.to_scalar::<f32>().unwrap());
            let want = chance_loss(queue.labels(), ys);
            assert!((loss - want).abs() < 1e-5, "{ys:?}: {loss} vs {want}");
        }
    }
}
