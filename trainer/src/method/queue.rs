//! The MoCo key queue, extended with one label per slot for Exemplar (paper eq. 2).
//!
//! Layout: `keys` is **[K, dim], one key per row** (MoCo's buffer is dim × K; rows make the
//! enqueue a contiguous row write and `q · queueᵀ` a plain matmul). Labels are kept on the host
//! (`Vec<i64>`), with −1 meaning "no label": a slot never filled since initialisation, or filled
//! by a batch enqueued without labels. −1 slots are never masked by the Exemplar loss.
//!
//! Enqueueing builds a *new* keys tensor instead of writing in place: a loss computed from the
//! previous queue may still be waiting for its backward pass (MoCo clones the queue for the same
//! reason), and its graph must keep seeing the keys it was computed with.
use std::collections::HashMap;

use candle_core::{bail, DType, Device, Result, Tensor};
use rand_distr::{Distribution, StandardNormal};

use crate::rng::{self, purpose};

/// Tensor names used by [`LabelQueue::to_tensors`] (MoCo's buffer names, plus the labels).
pub const KEYS_NAME: &str = "queue";
pub const LABELS_NAME: &str = "queue_labels";
pub const PTR_NAME: &str = "queue_ptr";

/// A FIFO of K L2-normalised keys with a label per slot.
#[derive(Debug, Clone)]
pub struct LabelQueue {
    /// [K, dim] f32, rows L2-normalised, never part of an autograd graph.
    keys: Tensor,
    /// Length K; −1 = no label (never filled, or enqueued without labels).
    labels: Vec<i64>,
    /// Next slot to overwrite; always < K.
    ptr: usize,
}

impl LabelQueue {
    /// K random unit vectors (MoCo: `randn(dim, K)` normalised per key), deterministic from
    /// `seed` through the `QUEUE_INIT` stream, all labels −1, pointer 0.
    pub fn new(k: usize, dim: usize, seed: u64, device: &Device) -> Result<LabelQueue> {
        if k == 0 || dim == 0 {
            bail!("queue: K ({k}) and dim ({dim}) must be > 0");
        }
        let mut r = rng::stream(seed, &[purpose::QUEUE_INIT]);
        let mut data = Vec::with_capacity(k * dim);
        for _ in 0..k {
            let row: Vec<f32> = (0..dim).map(|_| StandardNormal.sample(&mut r)).collect();
            let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            data.extend(row.iter().map(|x| x / norm));
        }
        let keys = Tensor::from_vec(data, (k, dim), device)?;
        Ok(LabelQueue {
            keys,
            labels: vec![-1; k],
            ptr: 0,
        })
    }

    /// Number of slots K.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Always false (K > 0); present for API symmetry with `len`.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn dim(&self) -> usize {
        self.keys.dims()[1]
    }

    /// [K, dim] keys, one per row.
    pub fn keys(&self) -> &Tensor {
        &self.keys
    }

    pub fn labels(&self) -> &[i64] {
        &self.labels
    }

    pub fn ptr(&self) -> usize {
        self.ptr
    }

    /// Write the batch's keys (and labels) at the pointer and advance it modulo K.
    ///
    /// `keys` is [B, dim] and should be L2-normalised (the contrastive loss returns them so);
    /// it is detached here. `labels`: `Some` with B labels ≥ 0 (Exemplar), or `None` (the slots
    /// get −1, never masked — MoCo has no use for labels). Requires K % B == 0 like MoCo, so
    /// that the pointer always lands on a batch boundary; the trainer drops the last short batch.
    pub fn enqueue(&mut self, keys: &Tensor, labels: Option<&[i64]>) -> Result<()> {
        let (b, dim) = keys.dims2()?;
        let k = self.len();
        if dim != self.dim() {
            bail!(
                "queue enqueue: keys have dim {dim}, queue has dim {}",
                self.dim()
            );
        }
        if b == 0 || !k.is_multiple_of(b) {
            bail!("queue enqueue: K = {k} must be a multiple of the batch size {b} (drop the last short batch)");
        }
        if self.ptr + b > k {
            bail!(
                "queue enqueue: pointer {} + batch {b} passes K = {k}; the batch size changed between calls",
                self.ptr
            );
        }
        if let Some(l) = labels {
            if l.len() != b {
                bail!("queue enqueue: {} labels for a batch of {b} keys", l.len());
            }
            if let Some(bad) = l.iter().find(|&&x| x < 0) {
                bail!("queue enqueue: label {bad} < 0 (labels must be ≥ 0; −1 is reserved for 'no label')");
            }
        }
        let src = keys
            .detach()
            .to_dtype(self.keys.dtype())?
            .to_device(self.keys.device())?
            .contiguous()?;
        self.keys = self.keys.slice_scatter0(&src, self.ptr)?;
        match labels {
            Some(l) => self.labels[self.ptr..self.ptr + b].copy_from_slice(l),
            None => self.labels[self.ptr..self.ptr + b].fill(-1),
        }
        self.ptr = (self.ptr + b) % k;
        Ok(())
    }

    /// The state for a checkpoint: `queue` [K, dim] f32, `queue_labels` [K] i64,
    /// `queue_ptr` [1] i64.
    pub fn to_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let dev = self.keys.device();
        let mut m = HashMap::new();
        m.insert(KEYS_NAME.to_string(), self.keys.clone());
        m.insert(
            LABELS_NAME.to_string(),
            Tensor::from_slice(&self.labels, self.labels.len(), dev)?,
        );
        m.insert(
            PTR_NAME.to_string(),
            Tensor::from_slice(&[self.ptr as i64], 1, dev)?,
        );
        Ok(m)
    }

    /// Rebuild a queue from [`LabelQueue::to_tensors`] output, validating shapes and values
    /// (a clear error naming the tensor, never a panic), and place the keys on `device`.
    pub fn from_tensors(t: &HashMap<String, Tensor>, device: &Device) -> Result<LabelQueue> {
        let get = |n: &str| match t.get(n) {
            Some(x) => Ok(x),
            None => Err(candle_core::Error::Msg(format!(
                "queue state: tensor '{n}' missing"
            ))),
        };
        let keys = get(KEYS_NAME)?;
        let Ok((k, dim)) = keys.dims2() else {
            bail!(
                "queue state: '{KEYS_NAME}' must be [K, dim], got {:?}",
                keys.dims()
            );
        };
        if k == 0 || dim == 0 {
            bail!("queue state: '{KEYS_NAME}' is empty ({:?})", keys.dims());
        }
        let labels = get(LABELS_NAME)?
            .to_dtype(DType::I64)?
            .flatten_all()?
            .to_vec1::<i64>()?;
        if labels.len() != k {
            bail!(
                "queue state: '{LABELS_NAME}' has {} entries for K = {k} keys",
                labels.len()
            );
        }
        if let Some(bad) = labels.iter().find(|&&x| x < -1) {
            bail!("queue state: '{LABELS_NAME}' holds {bad}; labels are ≥ 0 or −1");
        }
        let ptr = get(PTR_NAME)?
            .to_dtype(DType::I64)?
            .flatten_all()?
            .to_vec1::<i64>()?;
        let ptr = match ptr.as_slice() {
            [p] if *p >= 0 && (*p as usize) < k => *p as usize,
            other => bail!("queue state: '{PTR_NAME}' must be one value in 0..{k}, got {other:?}"),
        };
        let keys = keys.to_dtype(DType::F32)?.to_device(device)?.contiguous()?;
        Ok(LabelQueue { keys, labels, ptr })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(q: &LabelQueue) -> Vec<Vec<f32>> {
        q.keys().to_vec2::<f32>().unwrap()
    }

    #[test]
    fn init_is_deterministic_and_normalised() {
        let dev = Device::Cpu;
        let a = LabelQueue::new(16, 8, 3, &dev).unwrap();
        let b = LabelQueue::new(16, 8, 3, &dev).unwrap();
        let c = LabelQueue::new(16, 8, 4, &dev).unwrap();
        assert_eq!(rows(&a), rows(&b));
        assert_ne!(rows(&a), rows(&c));
        for r in rows(&a) {
            let n: f32 = r.iter().map(|x| x * x).sum();
            assert!((n - 1.0).abs() < 1e-5);
        }
        assert!(a.labels().iter().all(|&l| l == -1));
        assert_eq!(a.ptr(), 0);
    }

    #[test]
    fn enqueue_wraps_around() {
        let dev = Device::Cpu;
        let mut q = LabelQueue::new(4, 2, 0, &dev).unwrap();
        let init = rows(&q);
        let batch = |v: f32| Tensor::new(&[[v, 0.0], [0.0, v]], &dev).unwrap();
        q.enqueue(&batch(1.0), Some(&[10, 11])).unwrap();
        assert_eq!(q.ptr(), 2);
        assert_eq!(q.labels(), &[10, 11, -1, -1]);
        assert_eq!(&rows(&q)[2..], &init[2..]);
        q.enqueue(&batch(2.0), None).unwrap();
        assert_eq!(q.ptr(), 0, "pointer wraps to 0 after K slots");
        assert_eq!(q.labels(), &[10, 11, -1, -1]);
        q.enqueue(&batch(3.0), Some(&[7, 8])).unwrap();
        assert_eq!(q.ptr(), 2);
        assert_eq!(q.labels(), &[7, 8, -1, -1]);
        assert_eq!(
            rows(&q),
            vec![
                vec![3.0, 0.0],
                vec![0.0, 3.0],
                vec![2.0, 0.0],
                vec![0.0, 2.0]
            ]
        );
    }

    #[test]
    fn bad_batches_are_clear_errors() {
        let dev = Device::Cpu;
        let mut q = LabelQueue::new(4, 2, 0, &dev).unwrap();
        let three = Tensor::zeros((3, 2), DType::F32, &dev).unwrap();
        let e = q.enqueue(&three, None).unwrap_err().to_string();
        assert!(e.contains("multiple of the batch size 3"), "{e}");
        let two = Tensor::zeros((2, 2), DType::F32, &dev).unwrap();
        assert!(q
            .enqueue(&two, Some(&[1]))
            .unwrap_err()
            .to_string()
            .contains("1 labels"));
        assert!(q
            .enqueue(&two, Some(&[1, -1]))
            .unwrap_err()
            .to_string()
            .contains("label -1 < 0"));
        let wide = Tensor::zeros((2, 3), DType::F32, &dev).unwrap();
        assert!(q
            .enqueue(&wide, None)
            .unwrap_err()
            .to_string()
            .contains("dim 3"));
    }

    #[test]
    fn state_round_trips_and_is_validated() {
        let dev = Device::Cpu;
        let mut q = LabelQueue::new(4, 2, 9, &dev).unwrap();
        q.enqueue(
            &Tensor::new(&[[1f32, 0.0], [0.0, 1.0]], &dev).unwrap(),
            Some(&[5, 6]),
        )
        .unwrap();
        let st = q.to_tensors().unwrap();
        let r = LabelQueue::from_tensors(&st, &dev).unwrap();
        assert_eq!(rows(&r), rows(&q));
        assert_eq!((r.labels(), r.ptr()), (q.labels(), q.ptr()));
        let mut bad = st.clone();
        bad.insert(PTR_NAME.into(), Tensor::new(&[4i64], &dev).unwrap());
        assert!(LabelQueue::from_tensors(&bad, &dev)
            .unwrap_err()
            .to_string()
            .contains("queue_ptr"));
        let mut bad = st.clone();
        bad.remove(LABELS_NAME);
        assert!(LabelQueue::from_tensors(&bad, &dev)
            .unwrap_err()
            .to_string()
            .contains("'queue_labels' missing"));
    }
}
