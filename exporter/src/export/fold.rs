//! Batch-norm folding and the walk from a [`ResNet`] / [`LandmarkModel`] to the export [`Graph`].
//!
//! Eval-mode BN after a bias-free conv is an affine map per output channel, so it folds into
//! the conv: with `s = γ/√(var + eps)`, `w'[c] = w[c]·s[c]` and `b'[c] = β[c] − mean[c]·s[c]`.
//! The fold is computed in f64 and rounded once, so the folded f32 graph matches the candle
//! eval-mode model to f32 rounding (the parity tests prove ≤ 1e-4 relative).
use candle_core::Var;
use runtime_core::Task;

use super::graph::{Graph, GraphBuilder};
use super::ExportError;
use trainer::model::landmarks::{LandmarkModel, LEAKY_SLOPE};
use trainer::model::ops::BN_EPS;
use trainer::model::{ConvSpec, ResNet};

/// ImageNet mean/std on [0, 1] pixels: the normalisation every model of the project is trained with.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// See [`IMAGENET_MEAN`].
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Folds BN into conv weights `w` (`out_c` rows of equal length, any layout with the output
/// channel outermost). Returns `(w', b')`; see the module docs.
pub fn fold_bn(
    w: &[f32],
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f64,
) -> (Vec<f32>, Vec<f32>) {
    let oc = gamma.len();
    let per = w.len() / oc.max(1);
    let mut wf = Vec::with_capacity(w.len());
    let mut bf = Vec::with_capacity(oc);
    for c in 0..oc {
        let s = gamma[c] as f64 / (var[c] as f64 + eps).sqrt();
        wf.extend(
            w[c * per..(c + 1) * per]
                .iter()
                .map(|&x| (x as f64 * s) as f32),
        );
        bf.push((beta[c] as f64 - mean[c] as f64 * s) as f32);
    }
    (wf, bf)
}

fn values(v: Option<&Var>, name: &str) -> Result<Vec<f32>, ExportError> {
    let v = v.ok_or_else(|| ExportError::Graph(format!("tensor {name} missing from the model")))?;
    let t = v
        .as_tensor()
        .flatten_all()
        .and_then(|t| t.to_dtype(candle_core::DType::F32))
        .and_then(|t| t.to_vec1::<f32>());
    let vals = t.map_err(|e| ExportError::Graph(format!("{name}: {e}")))?;
    if let Some(i) = vals.iter().position(|x| !x.is_finite()) {
        return Err(ExportError::Graph(format!(
            "{name}[{i}] is not finite ({})",
            vals[i]
        )));
    }
    Ok(vals)
}

/// Folded `(w, b)` of a conv + BN, looked up by name with `get`.
fn folded(
    get: &dyn Fn(&str) -> Option<Var>,
    conv: &str,
    bn: &str,
) -> Result<(Vec<f32>, Vec<f32>), ExportError> {
    let v = |n: String| values(get(&n).as_ref(), &n);
    let w = v(format!("{conv}.weight"))?;
    let (g, b, m, var) = (
        v(format!("{bn}.weight"))?,
        v(format!("{bn}.bias"))?,
        v(format!("{bn}.running_mean"))?,
        v(format!("{bn}.running_var"))?,
    );
    if let Some(i) = var.iter().position(|&x| x < 0.0) {
        return Err(ExportError::Graph(format!(
            "{bn}.running_var[{i}] is negative ({})",
            var[i]
        )));
    }
    Ok(fold_bn(&w, &g, &b, &m, &var, BN_EPS))
}

fn conv_bn(
    gb: &mut GraphBuilder,
    net: &ResNet,
    x: usize,
    s: &ConvSpec,
    relu: bool,
) -> Result<usize, ExportError> {
    let (w, b) = folded(&|n| net.var(n).cloned(), &s.conv, &s.bn)?;
    gb.conv(&s.conv, x, w, b, s.kernel, s.stride, s.padding, relu)
}

/// The backbone up to its last feature map; returns the builder and that map's tensor.
fn backbone(net: &ResNet, size: usize, task: Task) -> Result<(GraphBuilder, usize), ExportError> {
    let mut gb = GraphBuilder::new(task, [3, size, size], IMAGENET_MEAN, IMAGENET_STD);
    let mut h = conv_bn(&mut gb, net, 0, net.stem(), true)?;
    if net.has_maxpool() {
        h = gb.maxpool(h, 3, 2, 1)?;
    }
    for block in net.blocks() {
        let shortcut = match &block.downsample {
            Some(d) => conv_bn(&mut gb, net, h, d, false)?,
            None => h,
        };
        let mut y = h;
        let last = block.convs.len() - 1;
        for (j, c) in block.convs.iter().enumerate() {
            y = conv_bn(&mut gb, net, y, c, j < last)?;
        }
        h = gb.add(y, shortcut, true)?;
    }
    Ok((gb, h))
}

/// A backbone as a features model: the pooled feature vector (MEAN over the last map). The
/// classifier `fc`, if the config has one, is not exported (few-shot heads read features).
pub fn backbone_graph(net: &ResNet, size: usize) -> Result<Graph, ExportError> {
    let (mut gb, h) = backbone(net, size, Task::Features)?;
    let y = gb.mean(h);
    Ok(gb.finish(y))
}

/// A landmark model: backbone map → head conv with `head.bn` folded → LeakyReLU → fc.
pub fn landmark_graph(m: &LandmarkModel) -> Result<Graph, ExportError> {
    let (mut gb, h) = backbone(&m.backbone, m.input_size, Task::Landmarks)?;
    let (w, b) = folded(&|n| m.head.var(n).cloned(), "head.conv", "head.bn")?;
    let y = gb.conv("head.conv", h, w, b, 1, 1, 0, false)?;
    let y = gb.leaky(y, LEAKY_SLOPE as f32);
    let v = |n: &str| values(m.head.var(n), n);
    let y = gb.fc("head.fc", y, v("head.fc.weight")?, v("head.fc.bias")?)?;
    Ok(gb.finish(y))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fold_bn_hand_computed() {
        // Two channels of two weights; eps 0 so the numbers stay round.
        // c0: γ=2, β=1, mean=3, var=4 → s=1, w'=w, b'=1−3=−2.
        // c1: γ=1, β=0, mean=−1, var=0.25 → s=2, w'=2w, b'=2.
        let (w, b) = fold_bn(
            &[1., -2., 3., 4.],
            &[2., 1.],
            &[1., 0.],
            &[3., -1.],
            &[4., 0.25],
            0.0,
        );
        assert_eq!(w, vec![1., -2., 6., 8.]);
        assert_eq!(b, vec![-2., 2.]);
    }
}
