//! The study's feature inversion (paper Figures 2 and 6): every objects backbone reconstructs
//! the same held-out images from its features ([`crate::analysis::invert`]), each image from the
//! same generator initialisation and noise for every backbone (a paired comparison), scored by
//! SSIM and by the fixed random network's distance ([`crate::analysis::similarity`]).
use std::path::Path;

use anyhow::{Context, Result};
use image::RgbImage;
use plotters::prelude::*;
use serde_json::{json, Value};

use super::preset::Preset;
use super::{data_dir, ids, read_record, rows, Backbone, Domain, Plan, RunOptions};
use crate::analysis::invert::{self, FeatureTarget, InversionInput, InvertConfig};
use crate::analysis::similarity::RandomFeatureDistance;
use trainer::data::{LabelledImages, MiniImageNet, Split};
use trainer::train::pretrain::BACKBONE;

/// Folder of a backbone's reconstructions, next to it.
pub const INVERT_DIR: &str = "invert";

/// `n` held-out images: the novel (test) classes' first images, one per class in turn, then
/// their second images, and so on (file order within a class).
pub fn held_out(list: &LabelledImages, n: usize) -> Vec<usize> {
    let mut per_class: Vec<Vec<usize>> = vec![Vec::new(); list.num_classes()];
    for (i, (_, c)) in list.items.iter().enumerate() {
        per_class[*c].push(i);
    }
    let deepest = per_class.iter().map(Vec::len).max().unwrap_or(0);
    (0..deepest)
        .flat_map(|j| per_class.iter().filter_map(move |c| c.get(j).copied()))
        .take(n)
        .collect()
}

fn test_list(p: &Preset, out: &Path) -> Result<LabelledImages> {
    let data = data_dir(p, out, Domain::Objects);
    Ok(MiniImageNet::open(&data)?.split(Split::Test)?)
}

/// Inverts the preset's held-out images through `dir`'s backbone; writes `dir/invert/<k>.png`.
pub(super) fn run(p: &Preset, out: &Path, dir: &Path, opts: &RunOptions) -> Result<Value> {
    let list = test_list(p, out)?;
    let picks = held_out(&list, p.invert.images);
    let (net, hash) = transfer_eval::open_backbone(&dir.join(BACKBONE), &opts.device)?;
    let dist = RandomFeatureDistance::new(&opts.device)?;
    let inv_dir = dir.join(INVERT_DIR);
    std::fs::create_dir_all(&inv_dir).with_context(|| format!("creating {}", inv_dir.display()))?;
    let iters = p.invert.iterations;
    let bar = opts.progress.then(|| {
        let b = indicatif::ProgressBar::new((picks.len() * iters) as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template("  invert {bar:30} {pos}/{len} {msg} ({eta})")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let mut images = Vec::new();
    for (k, &i) in picks.iter().enumerate() {
        let (img, _, _) = list.load(i)?;
        let input = InversionInput::from_image(&img, p.pretrain.image_size)?;
        let cfg = InvertConfig {
            iterations: iters,
            lr: 0.001,
            // The same generator and noise for image k whatever the backbone: a paired design.
            seed: p.seed.wrapping_mul(1_000_003).wrapping_add(k as u64),
            target: FeatureTarget::Map,
            log_every: (iters / 20).max(1),
        };
        let inv = invert::invert(&net, &input, &cfg, &mut |_, l| {
            if let Some(b) = &bar {
                b.inc(1);
                b.set_message(format!("loss {l:.3}"));
            }
        })?;
        let s = invert::score(&input, &inv.reconstruction, &dist, &opts.device)?;
        let png = inv_dir.join(format!("{k}.png"));
        save_png(&invert::to_rgb(&inv.reconstruction, input.side)?, &png)?;
        images.push(json!({
            "index": i, "file": list.items[i].0, "png": png,
            "initial_loss": inv.initial_loss(), "final_loss": inv.final_loss(),
            "losses": inv.losses,
            "ssim": s.ssim, "ssim_worst_quarter": s.ssim_worst_quarter,
            "random_feature_distance": s.random_feature_distance,
        }));
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(json!({
        "backbone_fnv64": hash, "iterations": iters, "lr": 0.001, "features": "layer4 map",
        "image_size": p.pretrain.image_size, "images": images,
    }))
}

/// Writes `img` as a PNG atomically.
pub fn save_png(img: &RgbImage, path: &Path) -> Result<()> {
    let mut bytes = std::io::Cursor::new(Vec::new());
    img.write_to(&mut bytes, image::ImageFormat::Png)?;
    trainer::fsutil::write_atomic(path, bytes.get_ref())
        .with_context(|| format!("writing {}", path.display()))
}

/// One method's per-image scores, from its step record.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct ImageScores {
    pub index: usize,
    pub png: std::path::PathBuf,
    pub initial_loss: f64,
    pub final_loss: f64,
    pub ssim: f64,
    pub ssim_worst_quarter: f64,
    pub random_feature_distance: f64,
}

/// Each row's scores (methods whose step has not run are left out).
pub fn collect(p: &Preset, out: &Path) -> Result<Vec<(Backbone, Vec<ImageScores>)>> {
    let mut r = Vec::new();
    for m in rows(p) {
        let Some(rec) = read_record(out, &ids::invert(m))? else {
            continue;
        };
        // A record without scores gives no row, like a step that has not run; scores of the
        // wrong shape are an error naming the step.
        let Some(images) = rec.result.get("images").filter(|v| !v.is_null()) else {
            continue;
        };
        let imgs: Vec<ImageScores> = serde_json::from_value(images.clone())
            .with_context(|| format!("step {}: unreadable per-image scores", ids::invert(m)))?;
        r.push((m, imgs));
    }
    Ok(r)
}

const CELL: u32 = 96;
const LABEL_W: u32 = 130;

/// `inversion.png` (Figure 2: the originals, then one row per method) and
/// `inversion_distance.png` (Figure 6: per image, each method's distance against supervised's).
pub(super) fn figures(plan: &Plan, out: &Path) -> Result<Value> {
    let p = &plan.preset;
    let scores = collect(p, out)?;
    let list = test_list(p, out)?;
    let mut rows = Vec::new();
    if let Some((_, first)) = scores.first() {
        let mut originals = Vec::new();
        for s in first {
            let (img, _, _) = list.load(s.index)?;
            let input = InversionInput::from_image(&img, p.pretrain.image_size)?;
            originals.push(invert::to_rgb(&input.pixels, input.side)?);
        }
        rows.push(("image".to_string(), originals));
    }
    for (m, imgs) in &scores {
        let mut v = Vec::new();
        for s in imgs {
            let img = image::open(&s.png)
                .with_context(|| format!("reading {}", s.png.display()))?
                .to_rgb8();
            v.push(img);
        }
        rows.push((m.to_string(), v));
    }
    let grid = out.join("inversion.png");
    write_grid(
        &rows,
        "Feature inversion (deep image prior) of held-out novel-class images",
        &grid,
    )?;
    let scatter = out.join("inversion_distance.png");
    distance_scatter(&scores, &scatter)?;
    Ok(json!({"files": [grid, scatter]}))
}

/// A labelled grid of images (Figure 2's layout): one row per `(label, images)`, each image
/// scaled to 96 px with nearest-neighbour sampling (the pixels as they are).
pub fn write_grid(rows: &[(String, Vec<RgbImage>)], title: &str, path: &Path) -> Result<()> {
    let cols = rows.iter().map(|r| r.1.len()).max().unwrap_or(0) as u32;
    let (w, h) = (
        (LABEL_W + CELL * cols.max(1)).max(560),
        30 + CELL * rows.len() as u32,
    );
    let mut canvas = RgbImage::from_pixel(w, h, image::Rgb([255, 255, 255]));
    for (row, (_, imgs)) in rows.iter().enumerate() {
        for (col, img) in imgs.iter().enumerate() {
            let c = image::imageops::resize(img, CELL, CELL, image::imageops::FilterType::Nearest);
            image::imageops::replace(
                &mut canvas,
                &c,
                (LABEL_W + CELL * col as u32) as i64,
                (30 + CELL * row as u32) as i64,
            );
        }
    }
    let mut raw = canvas.into_raw();
    {
        trainer::plot::init_font();
        let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("drawing {}: {e}", path.display());
        let area = BitMapBackend::with_buffer(&mut raw, (w, h)).into_drawing_area();
        let style = ("sans-serif", 16).into_font().color(&BLACK);
        area.draw_text(title, &style, (6, 6)).map_err(|e| err(&e))?;
        for (row, (label, _)) in rows.iter().enumerate() {
            let y = (30 + CELL * row as u32 + CELL / 2) as i32;
            area.draw_text(label, &style, (6, y)).map_err(|e| err(&e))?;
        }
        area.present().map_err(|e| err(&e))?;
    }
    let img = RgbImage::from_raw(w, h, raw).context("internal: canvas size")?;
    save_png(&img, path)
}

/// Figure 6's scatter: x = supervised's distance for an image, y = another method's.
fn distance_scatter(scores: &[(Backbone, Vec<ImageScores>)], path: &Path) -> Result<()> {
    trainer::plot::init_font();
    let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("drawing {}: {e}", path.display());
    let sup = scores.iter().find(|(m, _)| *m == Backbone::SUPERVISED);
    let all = scores
        .iter()
        .flat_map(|(_, s)| s.iter().map(|v| v.random_feature_distance));
    let hi = all.fold(0f64, f64::max).max(1e-6) * 1.05;
    let root = BitMapBackend::new(path, (640, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Reconstruction distance per image (below the diagonal: closer than supervised)",
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..hi, 0f64..hi)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("supervised: random-network distance")
        .y_desc("other method: random-network distance")
        .draw()
        .map_err(|e| err(&e))?;
    chart
        .draw_series(LineSeries::new([(0.0, 0.0), (hi, hi)], BLACK.mix(0.4)))
        .map_err(|e| err(&e))?;
    if let Some((_, base)) = sup {
        for (i, (m, s)) in scores
            .iter()
            .filter(|(m, _)| *m != Backbone::SUPERVISED)
            .enumerate()
        {
            let colour = Palette99::pick(i).to_rgba();
            let pts: Vec<(f64, f64)> = base
                .iter()
                .zip(s)
                .map(|(a, b)| (a.random_feature_distance, b.random_feature_distance))
                .collect();
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 4, colour.filled())))
                .map_err(|e| err(&e))?
                .label(m.to_string())
                .legend(move |(x, y)| Circle::new((x, y), 4, colour.filled()));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_out_takes_one_image_per_class_in_turn() {
        let list = LabelledImages {
            root: "r".into(),
            items: [0, 0, 0, 1, 2, 2]
                .iter()
                .map(|&c| ("f".into(), c))
                .collect(),
            class_names: vec!["a".into(), "b".into(), "c".into()],
            landmarks: None,
        };
        assert_eq!(held_out(&list, 4), [0, 3, 4, 1]);
        assert_eq!(held_out(&list, 10), [0, 3, 4, 1, 5, 2]);
    }
}
