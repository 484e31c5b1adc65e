//! Where each contrastive pretraining stands on the canonical MoCo trajectory: its training loss
//! over chance against the images it has seen, beside the same curve of the MoCo CIFAR-10 demo
//! (`trajectory.png`, and the "demo at the same images" column of the learnt table).
//!
//! Why: a MoCo loss falls slowly at first (the plateau), so "did not reach 0.6 × chance" means
//! little until it is set against what a correct MoCo reaches with the same number of images.
//! The reference is the saved log of facebookresearch/moco's `colab/moco_cifar10_demo.ipynb`
//! (commit f736491): ResNet-18 at full width, CIFAR-10, batch 512, K 4096, τ 0.1, m 0.99,
//! lr 0.06 cosine, 200 epochs of 97 steps (49 664 images), on a V100. Its chance loss is
//! ln(K + 1). Both curves are epoch means of the training loss against the (stale) queue, placed
//! at the middle of their epoch. The demo is another network on other data: the comparison says
//! where on the canonical curve a run is, not what it should reach.
use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;

use trainer::train::pretrain::MetricsLine;

/// Images per epoch of the demo: 97 full batches of 512 (its loader drops the last 336 of the
/// 50 000 images).
pub const DEMO_IMAGES_PER_EPOCH: f64 = 97.0 * 512.0;

/// The demo's queue length; its chance loss is ln(K + 1).
pub const DEMO_QUEUE: usize = 4096;

/// The demo's mean training loss of each of its 200 epochs, as its notebook printed them.
const DEMO_EPOCH_LOSS: [f64; 200] = [
    6.9569, 7.2502, 7.2901, 7.0985, 6.8622, 6.7211, 6.5900, 6.3696, 6.2157, 5.9910, //
    5.8198, 5.6121, 5.4148, 5.2465, 5.0541, 4.8606, 4.7165, 4.5980, 4.4505, 4.3413, //
    4.2460, 4.1474, 4.0679, 4.0024, 3.9131, 3.8743, 3.8231, 3.7875, 3.7366, 3.6916, //
    3.6432, 3.6216, 3.5854, 3.5675, 3.5206, 3.4871, 3.4513, 3.4526, 3.4059, 3.3835, //
    3.3648, 3.3506, 3.3216, 3.3053, 3.3088, 3.2636, 3.2785, 3.2513, 3.2265, 3.1945, //
    3.1930, 3.1805, 3.1643, 3.1341, 3.1397, 3.1217, 3.1163, 3.1005, 3.0909, 3.0637, //
    3.0787, 3.0468, 3.0374, 3.0078, 3.0304, 3.0011, 2.9891, 2.9947, 2.9727, 2.9560, //
    2.9426, 2.9571, 2.9360, 2.9217, 2.9354, 2.9365, 2.9120, 2.9065, 2.8877, 2.8952, //
    2.8742, 2.8371, 2.8666, 2.8605, 2.8354, 2.8293, 2.8002, 2.8078, 2.7993, 2.7976, //
    2.7907, 2.7824, 2.7683, 2.7680, 2.7849, 2.7451, 2.7616, 2.7337, 2.7259, 2.7264, //
    2.7159, 2.7125, 2.7025, 2.7144, 2.6853, 2.6697, 2.6827, 2.6738, 2.6582, 2.6436, //
    2.6426, 2.6488, 2.6346, 2.6177, 2.6282, 2.6122, 2.6126, 2.6101, 2.5958, 2.5987, //
    2.5840, 2.5960, 2.5673, 2.5844, 2.5729, 2.5541, 2.5501, 2.5458, 2.5452, 2.5401, //
    2.5259, 2.5149, 2.5067, 2.5055, 2.4997, 2.4884, 2.5011, 2.4875, 2.4843, 2.4661, //
    2.4761, 2.4563, 2.4677, 2.4541, 2.4338, 2.4435, 2.4442, 2.4292, 2.4145, 2.4265, //
    2.4291, 2.4147, 2.3927, 2.3913, 2.3895, 2.4036, 2.3845, 2.3814, 2.3777, 2.3764, //
    2.3698, 2.3662, 2.3529, 2.3557, 2.3488, 2.3473, 2.3343, 2.3280, 2.3202, 2.3252, //
    2.3215, 2.3142, 2.3068, 2.3041, 2.3068, 2.3104, 2.3139, 2.2892, 2.2829, 2.2911, //
    2.2841, 2.2950, 2.2915, 2.2866, 2.2773, 2.2886, 2.2672, 2.2807, 2.2894, 2.2757, //
    2.2694, 2.2711, 2.2638, 2.2773, 2.2658, 2.2704, 2.2580, 2.2529, 2.2585, 2.2716, //
];

/// The demo's curve: (images seen at the middle of each epoch, epoch mean loss / chance).
pub fn demo_points() -> Vec<(f64, f64)> {
    let chance = ((DEMO_QUEUE + 1) as f64).ln();
    DEMO_EPOCH_LOSS
        .iter()
        .enumerate()
        .map(|(e, l)| ((e as f64 + 0.5) * DEMO_IMAGES_PER_EPOCH, l / chance))
        .collect()
}

/// The demo's loss / chance after `images` images (linear between its epoch midpoints); `None`
/// before its first epoch's middle or past its last.
pub fn demo_ratio_at(images: f64) -> Option<f64> {
    let pts = demo_points();
    let i = pts.partition_point(|&(x, _)| x < images);
    if i == 0 {
        return (pts[0].0 == images).then_some(pts[0].1);
    }
    let (x1, y1) = *pts.get(i)?;
    let (x0, y0) = pts[i - 1];
    Some(y0 + (y1 - y0) * (images - x0) / (x1 - x0))
}

/// One run's curve from its `metrics.jsonl`: (images seen at the middle of each epoch, that
/// epoch's mean loss / `chance`). `images_per_epoch` is the run's images seen over its epochs.
/// The chance of the last epoch stands for every epoch (exact for MoCo once its queue is full;
/// Exemplar's kept negatives vary a little from batch to batch).
pub fn run_points(metrics: &Path, images_per_epoch: f64, chance: f64) -> Result<Vec<(f64, f64)>> {
    let text = std::fs::read_to_string(metrics)
        .with_context(|| format!("reading {}", metrics.display()))?;
    let mut pts = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let m: MetricsLine = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not a metrics line", metrics.display(), i + 1))?;
        if m.kind == "epoch" && (m.loss / chance).is_finite() {
            pts.push(((m.epoch as f64 + 0.5) * images_per_epoch, m.loss / chance));
        }
    }
    Ok(pts)
}

/// The chance loss the run's last queue probe recorded (ln(K + 1) for MoCo): what a summary
/// without a last epoch (a finished run resumed again) cannot give.
pub fn last_probe_chance(metrics: &Path) -> Result<Option<f64>> {
    let text = std::fs::read_to_string(metrics)
        .with_context(|| format!("reading {}", metrics.display()))?;
    let mut chance = None;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let m: MetricsLine = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not a metrics line", metrics.display(), i + 1))?;
        if let Some(p) = m.queue_probe {
            chance = Some(p.chance);
        }
    }
    Ok(chance.filter(|c| c.is_finite()))
}

/// `trajectory.png`: each run's loss / chance against images seen (log scale), the demo's as a
/// black line, and the 0.6 × chance line the learnt table uses.
pub fn trajectory_png(runs: &[(String, Vec<(f64, f64)>)], path: &Path) -> Result<()> {
    trainer::plot::init_font();
    let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("drawing {}: {e}", path.display());
    let run_max = runs
        .iter()
        .flat_map(|(_, p)| p.iter().map(|&(x, _)| x))
        .fold(0.0f64, f64::max);
    // The demo out to 4× the longest run (at least 1.5 M images, past where it crosses 0.6).
    let x_max = (4.0 * run_max).max(1.5e6);
    let demo: Vec<(f64, f64)> = demo_points()
        .into_iter()
        .filter(|&(x, _)| x <= x_max)
        .collect();
    let x_min = runs
        .iter()
        .flat_map(|(_, p)| p.iter().map(|&(x, _)| x))
        .chain(demo.iter().map(|&(x, _)| x))
        .filter(|&x| x > 0.0)
        .fold(f64::MAX, f64::min)
        .min(x_max / 10.0);
    let y_max = runs
        .iter()
        .flat_map(|(_, p)| p.iter().map(|&(_, y)| y))
        .chain(demo.iter().map(|&(_, y)| y))
        .filter(|y| y.is_finite())
        .fold(1.0f64, f64::max)
        .min(1.5);
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "contrastive pretraining: loss / chance against images seen",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((x_min..x_max).log_scale(), 0.0..y_max * 1.02)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("images seen")
        .y_desc("epoch mean loss / chance")
        .x_label_formatter(&|x| format!("{:.0}k", x / 1000.0))
        .draw()
        .map_err(|e| err(&e))?;
    let threshold = super::results::LEARNT_LOSS_RATIO;
    chart
        .draw_series(LineSeries::new(
            [(x_min, threshold), (x_max, threshold)],
            RED.mix(0.6).stroke_width(1),
        ))
        .map_err(|e| err(&e))?
        .label(format!("{threshold} × chance (learnt)"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.mix(0.6)));
    chart
        .draw_series(LineSeries::new(demo, BLACK.stroke_width(3)))
        .map_err(|e| err(&e))?
        .label("MoCo CIFAR-10 demo (ResNet-18, K 4096)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(3)));
    for (i, (name, pts)) in runs.iter().enumerate() {
        // Palette99's first colour is the threshold line's red.
        let colour = Palette99::pick(i + 1).to_rgba();
        chart
            .draw_series(LineSeries::new(
                pts.iter().copied().filter(|&(x, _)| x >= x_min),
                colour.stroke_width(2),
            ))
            .map_err(|e| err(&e))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_ratio_matches_the_notebook_at_its_epochs_and_interpolates_between() {
        let chance = 4097f64.ln();
        // Epoch 4 of the demo (its middle: 3.5 epochs), as printed in the notebook.
        let x4 = 3.5 * 49_664.0;
        assert!((demo_ratio_at(x4).unwrap() - 7.0985 / chance).abs() < 1e-12);
        // Half-way between epochs 15 and 16.
        let mid = 15.0 * 49_664.0;
        let want = (5.0541 + 4.8606) / 2.0 / chance;
        assert!((demo_ratio_at(mid).unwrap() - want).abs() < 1e-12);
        // The reading of the log: ~0.85 at ~175k images, 0.6 crossed after ~750k.
        let r175 = demo_ratio_at(175_000.0).unwrap();
        assert!((0.84..0.89).contains(&r175), "{r175}");
        assert!(demo_ratio_at(700_000.0).unwrap() > 0.6);
        assert!(demo_ratio_at(800_000.0).unwrap() < 0.6);
        assert_eq!(demo_ratio_at(1.0), None);
        assert_eq!(demo_ratio_at(1e9), None);
    }

    #[test]
    fn run_points_reads_epoch_lines_at_their_midpoints() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("metrics.jsonl");
        std::fs::write(
            &m,
            "{\"kind\":\"step\",\"epoch\":0,\"step\":1,\"loss\":9.0,\"lr\":0.1,\"images_per_sec\":1.0,\"train_top1\":0.0}\n\
             {\"kind\":\"epoch\",\"epoch\":0,\"step\":2,\"loss\":4.0,\"lr\":0.1,\"images_per_sec\":1.0,\"train_top1\":0.0}\n\
             \n\
             {\"kind\":\"epoch\",\"epoch\":1,\"step\":4,\"loss\":2.0,\"lr\":0.1,\"images_per_sec\":1.0,\"train_top1\":0.0}\n",
        )
        .unwrap();
        let pts = run_points(&m, 100.0, 8.0).unwrap();
        assert_eq!(pts, vec![(50.0, 0.5), (150.0, 0.25)]);
        std::fs::write(&m, "{not json\n").unwrap();
        let e = format!("{:#}", run_points(&m, 100.0, 8.0).unwrap_err());
        assert!(e.contains("metrics.jsonl:1"), "{e}");
    }
}
