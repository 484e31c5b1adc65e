//! `--plot`: the loss and kNN curves of a run, from its `metrics.jsonl`.
use std::path::Path;

use anyhow::{Context, Result};

use super::pretrain::MetricsLine;

/// Draw `metrics.jsonl` to `png`: training loss per step, and per-epoch kNN top-1 when present
/// (a second file, `*_knn.png`).
pub fn plot_metrics(metrics: &Path, png: &Path) -> Result<()> {
    let text = std::fs::read_to_string(metrics)
        .with_context(|| format!("reading {}", metrics.display()))?;
    let mut steps = Vec::new();
    let mut knn = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let m: MetricsLine = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not a metrics line", metrics.display(), i + 1))?;
        if m.kind == "step" {
            steps.push((m.step as f64, m.loss));
        } else if let Some(k) = m.knn_top1 {
            knn.push(((m.epoch + 1) as f64, k));
        }
    }
    crate::plot::line_chart(
        png,
        "pretraining loss",
        "step",
        "loss",
        &[("loss".into(), steps)],
    )?;
    if !knn.is_empty() {
        let knn_png = png.with_file_name(format!(
            "{}_knn.png",
            png.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        ));
        crate::plot::line_chart(
            &knn_png,
            "kNN monitor",
            "epoch",
            "top-1 (%)",
            &[("kNN top-1".into(), knn)],
        )?;
    }
    Ok(())
}
