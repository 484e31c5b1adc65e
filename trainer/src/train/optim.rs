//! SGD with PyTorch's exact update rule, so that learning rates, momentum and weight decay from
//! the MoCo code and from Chen et al.'s few-shot protocol (dampening 0.9) mean the same here:
//!
//! ```text
//! d_p = g + wd·p
//! buf = d_p                                  (first step of this parameter)
//! buf = momentum·buf + (1 − dampening)·d_p   (later steps)
//! d_p = d_p + momentum·buf if nesterov else buf
//! p  -= lr·d_p
//! ```
//!
//! Parameters are held with names so the momentum buffers can be saved in and restored from a
//! checkpoint under recognisable keys (`<param>.momentum_buffer`).
use std::collections::{BTreeMap, HashMap};

use candle_core::backprop::GradStore;
use candle_core::{bail, Result, Tensor, Var};

/// Hyper-parameters of [`Sgd`] (PyTorch `torch.optim.SGD` arguments).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdConfig {
    pub lr: f64,
    pub momentum: f64,
    pub dampening: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
}

impl SgdConfig {
    /// MoCo / supervised pretraining: momentum 0.9, no dampening, given wd.
    pub fn pretrain(lr: f64, weight_decay: f64) -> SgdConfig {
        SgdConfig {
            lr,
            momentum: 0.9,
            dampening: 0.0,
            weight_decay,
            nesterov: false,
        }
    }
}

/// Stochastic gradient descent over named [`Var`]s.
pub struct Sgd {
    params: Vec<(String, Var)>,
    cfg: SgdConfig,
    /// Momentum buffers by parameter name; absent until the parameter's first step (as in
    /// PyTorch, where the first step initialises the buffer to `d_p` without dampening).
    bufs: BTreeMap<String, Tensor>,
}

/// Suffix of a momentum buffer's name in [`Sgd::state_tensors`].
pub const BUF_SUFFIX: &str = ".momentum_buffer";

impl Sgd {
    /// Names must be unique; nesterov needs momentum > 0 and dampening 0 (PyTorch's rule).
    pub fn new(params: Vec<(String, Var)>, cfg: SgdConfig) -> Result<Sgd> {
        let mut seen = std::collections::HashSet::new();
        for (n, _) in &params {
            if !seen.insert(n.as_str()) {
                bail!("Sgd: parameter name '{n}' given twice");
            }
        }
        if cfg.nesterov && (cfg.momentum <= 0.0 || cfg.dampening != 0.0) {
            bail!("Sgd: nesterov momentum requires a momentum > 0 and zero dampening");
        }
        if !(cfg.lr >= 0.0 && cfg.momentum >= 0.0 && cfg.weight_decay >= 0.0) {
            bail!("Sgd: lr, momentum and weight_decay must be ≥ 0 (got {cfg:?})");
        }
        Ok(Sgd {
            params,
            cfg,
            bufs: BTreeMap::new(),
        })
    }

    pub fn lr(&self) -> f64 {
        self.cfg.lr
    }

    /// Set the lr for the next steps (the schedule is evaluated once per epoch by the trainer).
    pub fn set_lr(&mut self, lr: f64) {
        self.cfg.lr = lr;
    }

    pub fn config(&self) -> SgdConfig {
        self.cfg
    }

    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    /// One update from `grads`. Parameters without a gradient are skipped entirely (their
    /// buffer is not decayed either), as PyTorch skips parameters whose `.grad` is `None`.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        let c = self.cfg;
        for (name, var) in &self.params {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let p = var.as_tensor();
            // CUDA f32: the same update as two fused kernels (momentum buffer, then parameter),
            // both in place, instead of ~11 candle ops (kernels::cuda::sgd_momentum_step).
            #[cfg(feature = "cuda")]
            if c.momentum != 0.0
                && crate::kernels::cuda::is_cuda_f32(p)
                && g.dtype() == candle_core::DType::F32
            {
                let buf = crate::kernels::cuda::sgd_momentum_step(
                    p,
                    g,
                    self.bufs.get(name),
                    c.lr,
                    c.momentum,
                    c.dampening,
                    c.weight_decay,
                    c.nesterov,
                )?;
                self.bufs.insert(name.clone(), buf);
                continue;
            }
            let mut d_p = if c.weight_decay != 0.0 {
                (g + p.affine(c.weight_decay, 0.0)?)?
            } else {
                g.clone()
            };
            if c.momentum != 0.0 {
                let buf = match self.bufs.get(name) {
                    None => d_p.detach(),
                    Some(b) => {
                        (b.affine(c.momentum, 0.0)? + d_p.affine(1.0 - c.dampening, 0.0)?)?
                    }
                };
                d_p = if c.nesterov {
                    (d_p + buf.affine(c.momentum, 0.0)?)?
                } else {
                    buf.clone()
                };
                self.bufs.insert(name.clone(), buf.detach());
            }
            var.set(&(p - d_p.affine(c.lr, 0.0)?)?.detach())?;
        }
        Ok(())
    }

    /// `loss.backward()` then [`Sgd::step`].
    pub fn backward_step(&mut self, loss: &Tensor) -> Result<()> {
        let grads = loss.backward()?;
        self.step(&grads)
    }

    /// The momentum buffers as `<param>.momentum_buffer` tensors, for checkpoints. Parameters
    /// that have not stepped yet have no entry.
    pub fn state_tensors(&self) -> HashMap<String, Tensor> {
        self.bufs
            .iter()
            .map(|(n, b)| (format!("{n}{BUF_SUFFIX}"), Self::snapshot(b)))
            .collect()
    }

    /// A buffer as handed out: on CUDA the fused step updates buffers in place, so callers get
    /// a copy (falling back to a shared handle only if the copy cannot be allocated).
    fn snapshot(b: &Tensor) -> Tensor {
        #[cfg(feature = "cuda")]
        if b.device().is_cuda() {
            return b.copy().unwrap_or_else(|_| b.clone());
        }
        b.clone()
    }

    /// Restore buffers written by [`Sgd::state_tensors`]. Every key must name a parameter of this
    /// optimiser with the same shape; anything else is an error naming the key (a checkpoint from
    /// another model must not be half-loaded silently).
    pub fn load_state_tensors(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        let mut bufs = BTreeMap::new();
        for (key, t) in state {
            let Some(name) = key.strip_suffix(BUF_SUFFIX) else {
                bail!("optimizer state: key '{key}' does not end in '{BUF_SUFFIX}'");
            };
            let Some((_, var)) = self.params.iter().find(|(n, _)| n == name) else {
                bail!("optimizer state: '{key}' names no parameter of this optimizer");
            };
            if t.dims() != var.dims() {
                bail!(
                    "optimizer state: '{key}' has shape {:?}, parameter has {:?}",
                    t.dims(),
                    var.dims()
                );
            }
            let t = t.to_device(var.device())?.to_dtype(var.dtype())?;
            // On CUDA the fused step updates the buffer in place: own its storage.
            #[cfg(feature = "cuda")]
            let t = if t.device().is_cuda() { t.copy()? } else { t };
            bufs.insert(name.to_string(), t);
        }
        self.bufs = bufs;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// A scalar parameter p with loss c·p²/2·… — we feed gradients explicitly via a loss whose
    /// gradient is known: L = a·p gives g = a.
    fn run(cfg: SgdConfig, grads_a: &[f64], p0: f64) -> Vec<f64> {
        let dev = Device::Cpu;
        let v = Var::from_tensor(&Tensor::new(&[p0], &dev).unwrap()).unwrap();
        let mut opt = Sgd::new(vec![("p".into(), v.clone())], cfg).unwrap();
        let mut traj = vec![];
        for &a in grads_a {
            let loss = (v.as_tensor() * a).unwrap().sum_all().unwrap();
            opt.backward_step(&loss).unwrap();
            traj.push(v.as_tensor().to_vec1::<f64>().unwrap()[0]);
        }
        traj
    }

    /// Hand-rolled PyTorch SGD on a scalar, written independently of `Sgd::step`.
    fn reference(cfg: SgdConfig, grads_a: &[f64], p0: f64) -> Vec<f64> {
        let (mut p, mut buf, mut out) = (p0, None::<f64>, vec![]);
        for &g in grads_a {
            let d = g + cfg.weight_decay * p;
            let b = match buf {
                None => d,
                Some(b) => cfg.momentum * b + (1.0 - cfg.dampening) * d,
            };
            buf = Some(b);
            let step = if cfg.nesterov {
                d + cfg.momentum * b
            } else {
                b
            };
            p -= cfg.lr * step;
            out.push(p);
        }
        out
    }

    #[test]
    fn three_steps_by_hand_momentum_wd() {
        // lr 0.1, m 0.9, wd 0.01, p0 = 1, g = 1 each step.
        // 1: d=1.01, buf=1.01, p=1-0.101=0.899
        // 2: d=1+0.00899=1.00899, buf=0.909+1.00899=1.91799, p=0.899-0.191799=0.707201
        // 3: d=1.00707201, buf=1.726191+1.00707201=2.73326301, p=0.707201-0.273326301=0.433874699
        let cfg = SgdConfig {
            lr: 0.1,
            momentum: 0.9,
            dampening: 0.0,
            weight_decay: 0.01,
            nesterov: false,
        };
        let t = run(cfg, &[1.0, 1.0, 1.0], 1.0);
        let hand = [0.899, 0.707201, 0.433874699];
        for (a, b) in t.iter().zip(hand) {
            assert!((a - b).abs() < 1e-12, "{t:?} vs {hand:?}");
        }
    }

    #[test]
    fn dampening_matches_reference_and_first_step_is_undamped() {
        // The few-shot protocol: lr 0.01, momentum 0.9, dampening 0.9, wd 0.001.
        let cfg = SgdConfig {
            lr: 0.01,
            momentum: 0.9,
            dampening: 0.9,
            weight_decay: 0.001,
            nesterov: false,
        };
        let g = [2.0, -1.0, 0.5, 3.0];
        let t = run(cfg, &g, 0.7);
        let r = reference(cfg, &g, 0.7);
        for (a, b) in t.iter().zip(&r) {
            assert!((a - b).abs() < 1e-12, "{t:?} vs {r:?}");
        }
        // First step: buf = d_p (no (1-dampening) factor): p = 0.7 - 0.01·(2 + 0.0007).
        assert!((t[0] - (0.7 - 0.01 * 2.0007)).abs() < 1e-12);
        // Second step by hand: d = -1 + 0.001·p1; buf = 0.9·2.0007 + 0.1·d.
        let p1 = 0.7 - 0.01 * 2.0007;
        let d = -1.0 + 0.001 * p1;
        let buf = 0.9 * 2.0007 + 0.1 * d;
        assert!((t[1] - (p1 - 0.01 * buf)).abs() < 1e-12);
    }

    #[test]
    fn nesterov_matches_reference() {
        let cfg = SgdConfig {
            lr: 0.05,
            momentum: 0.9,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: true,
        };
        let g = [1.0, 2.0, -1.0];
        let (t, r) = (run(cfg, &g, 0.0), reference(cfg, &g, 0.0));
        for (a, b) in t.iter().zip(&r) {
            assert!((a - b).abs() < 1e-12);
        }
    }

    #[test]
    fn state_round_trips_and_continues_identically() {
        let dev = Device::Cpu;
        let cfg = SgdConfig::pretrain(0.1, 1e-4);
        let mk = || Var::from_tensor(&Tensor::new(&[1.0f64, -2.0], &dev).unwrap()).unwrap();
        let (a, b) = (mk(), mk());
        let mut oa = Sgd::new(vec![("w".into(), a.clone())], cfg).unwrap();
        let loss = |v: &Var| (v.as_tensor().sqr().unwrap()).sum_all().unwrap();
        oa.backward_step(&loss(&a)).unwrap();
        b.set(a.as_tensor()).unwrap();
        let mut ob = Sgd::new(vec![("w".into(), b.clone())], cfg).unwrap();
        let st = oa.state_tensors();
        assert_eq!(st.keys().collect::<Vec<_>>(), vec!["w.momentum_buffer"]);
        ob.load_state_tensors(&st).unwrap();
        oa.backward_step(&loss(&a)).unwrap();
        ob.backward_step(&loss(&b)).unwrap();
        assert_eq!(
            a.as_tensor().to_vec1::<f64>().unwrap(),
            b.as_tensor().to_vec1::<f64>().unwrap()
        );
        // Wrong name / shape are clear errors.
        let mut bad = HashMap::new();
        bad.insert(
            "v.momentum_buffer".to_string(),
            Tensor::new(&[0.0f64, 0.0], &dev).unwrap(),
        );
        assert!(ob
            .load_state_tensors(&bad)
            .unwrap_err()
            .to_string()
            .contains("'v.momentum_buffer'"));
        bad.clear();
        bad.insert(
            "w.momentum_buffer".to_string(),
            Tensor::new(&[0.0f64], &dev).unwrap(),
        );
        assert!(ob
            .load_state_tensors(&bad)
            .unwrap_err()
            .to_string()
            .contains("shape"));
    }
}
