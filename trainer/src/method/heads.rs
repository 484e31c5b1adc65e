//! Projection heads on top of the pooled backbone feature, named as in the MoCo code so that a
//! checkpoint is recognisable: v1 replaces the ResNet `fc` with `fc` Linear(C, 128); v2 with
//! `fc.0` Linear(C, C) → ReLU → `fc.2` Linear(C, 128) (index 1 is the parameter-free ReLU).
//!
//! Weights are stored as torch stores them: `weight` [out, in], `bias` [out]. Initialisation is
//! torch's `nn.Linear` default, U(−1/√fan_in, 1/√fan_in) for weight and bias, drawn from a
//! deterministic stream so a run is reproducible whatever the thread count.
use std::collections::{BTreeMap, HashMap};

use candle_core::{bail, DType, Device, Result, Tensor, Var};
use rand::distributions::{Distribution, Uniform};

use crate::rng::{self, purpose};

/// Sub-path of [`purpose::INIT`] reserved for projection heads ("HEAD" in ASCII), so head
/// initialisation never shares a stream with the backbone's.
const HEAD_STREAM: u64 = 0x4845_4144;

/// Linear (v1) or MLP (v2) projection head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum HeadKind {
    Linear,
    Mlp,
}

impl HeadKind {
    /// The Linear layers as (name prefix, in, out).
    fn layers(self, in_dim: usize, out_dim: usize) -> Vec<(&'static str, usize, usize)> {
        match self {
            HeadKind::Linear => vec![("fc", in_dim, out_dim)],
            HeadKind::Mlp => vec![("fc.0", in_dim, in_dim), ("fc.2", in_dim, out_dim)],
        }
    }
}

/// A projection head: named [`Var`]s plus its forward function.
#[derive(Debug, Clone)]
pub struct Head {
    kind: HeadKind,
    in_dim: usize,
    out_dim: usize,
    vars: BTreeMap<String, Var>,
}

impl Head {
    /// A freshly initialised head, deterministic from `seed`.
    pub fn new(
        kind: HeadKind,
        in_dim: usize,
        out_dim: usize,
        seed: u64,
        device: &Device,
    ) -> Result<Head> {
        if in_dim == 0 || out_dim == 0 {
            bail!("projection head: dimensions must be > 0 (in {in_dim}, out {out_dim})");
        }
        let mut vars = BTreeMap::new();
        for (i, (name, fan_in, fan_out)) in kind.layers(in_dim, out_dim).into_iter().enumerate() {
            let mut r = rng::stream(seed, &[purpose::INIT, HEAD_STREAM, i as u64]);
            let bound = 1.0 / (fan_in as f32).sqrt();
            let u = Uniform::new_inclusive(-bound, bound);
            let w: Vec<f32> = (0..fan_in * fan_out).map(|_| u.sample(&mut r)).collect();
            let b: Vec<f32> = (0..fan_out).map(|_| u.sample(&mut r)).collect();
            vars.insert(
                format!("{name}.weight"),
                Var::from_vec(w, (fan_out, fan_in), device)?,
            );
            vars.insert(format!("{name}.bias"), Var::from_vec(b, fan_out, device)?);
        }
        Ok(Head {
            kind,
            in_dim,
            out_dim,
            vars,
        })
    }

    pub fn kind(&self) -> HeadKind {
        self.kind
    }

    pub fn in_dim(&self) -> usize {
        self.in_dim
    }

    pub fn out_dim(&self) -> usize {
        self.out_dim
    }

    /// The parameters by name (`fc.weight`, or `fc.0.weight`, `fc.2.bias`, …).
    pub fn vars(&self) -> &BTreeMap<String, Var> {
        &self.vars
    }

    /// The parameters as a name-sorted list, the form the optimiser and the EMA take.
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        self.vars
            .iter()
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect()
    }

    fn var(&self, name: &str) -> Result<&Var> {
        match self.vars.get(name) {
            Some(v) => Ok(v),
            None => bail!("projection head: missing parameter '{name}'"),
        }
    }

    fn linear(&self, x: &Tensor, prefix: &str) -> Result<Tensor> {
        let w = self.var(&format!("{prefix}.weight"))?;
        let b = self.var(&format!("{prefix}.bias"))?;
        x.matmul(&w.as_tensor().t()?)?.broadcast_add(b.as_tensor())
    }

    /// [B, in_dim] → [B, out_dim] (not normalised; the contrastive loss normalises).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, c) = x.dims2()?;
        if c != self.in_dim {
            bail!(
                "projection head: input has {c} features, head expects {}",
                self.in_dim
            );
        }
        match self.kind {
            HeadKind::Linear => self.linear(x, "fc"),
            HeadKind::Mlp => self.linear(&self.linear(x, "fc.0")?.relu()?, "fc.2"),
        }
    }

    /// An independent copy (new Vars, same values): MoCo initialises the key encoder as a copy
    /// of the query encoder and then only moves it by EMA.
    pub fn copy_detached(&self) -> Result<Head> {
        let mut vars = BTreeMap::new();
        for (n, v) in &self.vars {
            vars.insert(
                n.clone(),
                Var::from_tensor(&v.as_tensor().detach().copy()?)?,
            );
        }
        Ok(Head {
            kind: self.kind,
            in_dim: self.in_dim,
            out_dim: self.out_dim,
            vars,
        })
    }

    /// Overwrite the values from a checkpoint's tensors (names without any encoder prefix).
    /// Every parameter must be present with its exact shape; missing or mis-shaped entries are
    /// errors naming the tensor. Extra entries are ignored (the map usually holds a whole model).
    pub fn load(&self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        for (n, v) in &self.vars {
            let Some(t) = tensors.get(n) else {
                bail!("projection head: tensor '{n}' missing")
            };
            if t.dims() != v.dims() {
                bail!(
                    "projection head: tensor '{n}' has shape {:?}, expected {:?}",
                    t.dims(),
                    v.dims()
                );
            }
            v.set(&t.to_dtype(DType::F32)?.to_device(v.device())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_shapes_and_init_bounds() {
        let dev = Device::Cpu;
        let h = Head::new(HeadKind::Mlp, 16, 4, 1, &dev).unwrap();
        let names: Vec<_> = h.vars().keys().cloned().collect();
        assert_eq!(
            names,
            ["fc.0.bias", "fc.0.weight", "fc.2.bias", "fc.2.weight"]
        );
        assert_eq!(h.vars()["fc.0.weight"].dims(), &[16, 16]);
        assert_eq!(h.vars()["fc.2.weight"].dims(), &[4, 16]);
        let w = h.vars()["fc.2.weight"]
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(
            w.iter().all(|x| x.abs() <= 0.25 + 1e-7),
            "U(-1/sqrt(16), 1/sqrt(16))"
        );
        assert!(
            w.iter().any(|x| x.abs() > 0.2),
            "spread over the whole interval"
        );
        let l = Head::new(HeadKind::Linear, 8, 3, 1, &dev).unwrap();
        assert_eq!(
            l.vars().keys().cloned().collect::<Vec<_>>(),
            ["fc.bias", "fc.weight"]
        );
        let again = Head::new(HeadKind::Linear, 8, 3, 1, &dev).unwrap();
        let other = Head::new(HeadKind::Linear, 8, 3, 2, &dev).unwrap();
        let vals = |h: &Head| h.vars()["fc.weight"].as_tensor().to_vec2::<f32>().unwrap();
        assert_eq!(vals(&l), vals(&again));
        assert_ne!(vals(&l), vals(&other));
    }

    #[test]
    fn forward_matches_hand_values() {
        let dev = Device::Cpu;
        let h = Head::new(HeadKind::Mlp, 2, 1, 0, &dev).unwrap();
        let mut t = HashMap::new();
        t.insert(
            "fc.0.weight".to_string(),
            Tensor::new(&[[1f32, 2.0], [-1.0, 0.5]], &dev).unwrap(),
        );
        t.insert(
            "fc.0.bias".to_string(),
            Tensor::new(&[0.5f32, -3.0], &dev).unwrap(),
        );
        t.insert(
            "fc.2.weight".to_string(),
            Tensor::new(&[[2f32, 10.0]], &dev).unwrap(),
        );
        t.insert("fc.2.bias".to_string(), Tensor::new(&[1f32], &dev).unwrap());
        h.load(&t).unwrap();
        // x = (1, 1): hidden = (1+2+0.5, -1+0.5-3) = (3.5, -3.5) → ReLU (3.5, 0) → 2·3.5 + 1 = 8.
        let y = h
            .forward(&Tensor::new(&[[1f32, 1.0]], &dev).unwrap())
            .unwrap();
        assert_eq!(y.to_vec2::<f32>().unwrap(), vec![vec![8.0]]);
        t.remove("fc.2.bias");
        assert!(h
            .load(&t)
            .unwrap_err()
            .to_string()
            .contains("'fc.2.bias' missing"));
        assert!(h
            .forward(&Tensor::zeros((1, 3), DType::F32, &dev).unwrap())
            .is_err());
    }

    #[test]
    fn copy_is_independent() {
        let dev = Device::Cpu;
        let h = Head::new(HeadKind::Linear, 4, 2, 0, &dev).unwrap();
        let c = h.copy_detached().unwrap();
        let before = c.vars()["fc.bias"].as_tensor().to_vec1::<f32>().unwrap();
        h.vars()["fc.bias"]
            .set(&Tensor::zeros(2, DType::F32, &dev).unwrap())
            .unwrap();
        assert_eq!(
            c.vars()["fc.bias"].as_tensor().to_vec1::<f32>().unwrap(),
            before
        );
    }
}
