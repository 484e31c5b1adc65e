//! The study's figures: `fewshot.png` (accuracy per method with 95% whiskers) and
//! `landmarks.png` (the paper's Figure 3: predicted landmarks on MAFL test faces, one row per
//! method), plus the per-image landmark errors the interval of Table 5 comes from.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use image::RgbImage;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::results::StudyResults;
use super::Backbone;
use trainer::augment::{eval_transform, AugmentConfig};
use trainer::data::{mafl_crop, CelebA, Landmarks, NUM_LANDMARKS};
use trainer::model::landmarks::LandmarkModel;
use trainer::model::BnMode;
use transfer_eval::landmarks::iod_error;

/// One MAFL test face as the model saw it: the MAFL square crop, and predicted / true landmarks in
/// the model's input pixels.
pub struct FacePrediction {
    pub crop: RgbImage,
    pub input_size: usize,
    pub pred: Landmarks,
    pub gt: Landmarks,
}

/// Predictions of `model` on the first `n` MAFL test faces of `root` (the evaluation transform
/// of `eval landmarks`: MAFL crop, resize, normalise; eval-mode BN).
pub fn predict_mafl_test(
    model: &LandmarkModel,
    root: &Path,
    n: usize,
    device: &Device,
) -> Result<Vec<FacePrediction>> {
    let celeba = CelebA::open_preferring_exact(root)?;
    let test = celeba.mafl_test();
    let s = model.input_size;
    let cfg = AugmentConfig::none(s);
    let count = test.len().min(n);
    let mut out = Vec::with_capacity(count);
    let mut start = 0;
    while start < count {
        let end = (start + 64).min(count);
        let mut pixels = Vec::with_capacity((end - start) * 3 * s * s);
        let mut items = Vec::new();
        for i in start..end {
            let (img, _, lm) = test.load(i)?;
            let lm = lm.with_context(|| {
                format!("{}: no landmarks for this image", test.items[i].0.display())
            })?;
            let (crop, lm) = mafl_crop(&img, &lm);
            let a = eval_transform(&crop, Some(&lm), &cfg)?;
            pixels.extend_from_slice(&a.pixels);
            let gt = a
                .landmarks
                .context("the eval transform dropped the landmarks")?;
            items.push((crop, gt));
        }
        let x = Tensor::from_vec(pixels, (end - start, 3, s, s), device)?;
        let rows: Vec<Vec<f32>> = model.forward(&x, BnMode::Eval)?.to_vec2()?;
        for ((crop, gt), row) in items.into_iter().zip(rows) {
            if row.len() != 2 * NUM_LANDMARKS {
                bail!(
                    "the landmark model gave {} outputs, expected {}",
                    row.len(),
                    2 * NUM_LANDMARKS
                );
            }
            let mut pred = [[0f32; 2]; NUM_LANDMARKS];
            for (k, p) in pred.iter_mut().enumerate() {
                *p = [row[2 * k] * s as f32, row[2 * k + 1] * s as f32];
            }
            out.push(FacePrediction {
                crop,
                input_size: s,
                pred,
                gt,
            });
        }
        start = end;
    }
    Ok(out)
}

/// Mean of the per-image IOD errors (%) and its 95% interval half-width ([`mean_ci95`]); faces
/// whose true eyes coincide are left out, as in [`iod_error`].
pub fn per_image_iod(faces: &[FacePrediction]) -> Result<(f64, f64)> {
    let errs: Vec<f64> = faces
        .iter()
        .filter_map(|f| iod_error(&[f.pred], &[f.gt]).ok().map(|r| r.iod_error))
        .collect();
    mean_ci95(&errs).context("no test face with distinct ground-truth eyes")
}

pub use runtime_core::metrics::mean_ci95;

fn draw_err(path: &Path) -> impl Fn(&dyn std::fmt::Display) -> anyhow::Error + '_ {
    move |e| anyhow::anyhow!("drawing {}: {e}", path.display())
}

/// Bars of host few-shot accuracy per method and shot, with 95% interval whiskers.
pub fn fewshot_png(r: &StudyResults, path: &Path) -> Result<()> {
    trainer::plot::init_font();
    let err = draw_err(path);
    let shots: Vec<usize> = r.preset.fewshot.shots.clone();
    let names: Vec<String> = r.rows.iter().map(|x| x.method.to_string()).collect();
    let top = r
        .rows
        .iter()
        .flat_map(|x| {
            x.fewshot
                .iter()
                .filter_map(|c| c.host.map(|f| f.value + f.ci95.unwrap_or(0.0)))
        })
        .fold(0f64, f64::max)
        .max(100.0 / r.preset.fewshot.way as f64)
        * 1.1;
    let root = BitMapBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let n = names.len().max(1) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "{}-way few-shot accuracy on the novel classes (host f32, 95% intervals)",
                r.preset.fewshot.way
            ),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5f64..(n - 0.5), 0f64..top.max(1.0))
        .map_err(|e| err(&e))?;
    let labels = names.clone();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(names.len().max(1))
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 {
                labels.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("accuracy (%)")
        .draw()
        .map_err(|e| err(&e))?;
    let k = shots.len().max(1) as f64;
    let w = 0.8 / k;
    for (j, &shot) in shots.iter().enumerate() {
        let colour = Palette99::pick(j).to_rgba();
        let mut bars = Vec::new();
        let mut whiskers = Vec::new();
        for (i, row) in r.rows.iter().enumerate() {
            let Some(f) = row
                .fewshot
                .iter()
                .find(|c| c.shot == shot)
                .and_then(|c| c.host)
            else {
                continue;
            };
            let x0 = i as f64 - 0.4 + j as f64 * w;
            bars.push(Rectangle::new(
                [(x0, 0.0), (x0 + w * 0.9, f.value)],
                colour.filled(),
            ));
            let c = f.ci95.unwrap_or(0.0);
            let xm = x0 + w * 0.45;
            whiskers.push(PathElement::new(
                vec![(xm, f.value - c), (xm, f.value + c)],
                BLACK.stroke_width(2),
            ));
            whiskers.push(PathElement::new(
                vec![(xm - w * 0.2, f.value + c), (xm + w * 0.2, f.value + c)],
                BLACK.stroke_width(2),
            ));
            whiskers.push(PathElement::new(
                vec![(xm - w * 0.2, f.value - c), (xm + w * 0.2, f.value - c)],
                BLACK.stroke_width(2),
            ));
        }
        chart
            .draw_series(bars)
            .map_err(|e| err(&e))?
            .label(format!("{shot}-shot"))
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], colour.filled()));
        chart.draw_series(whiskers).map_err(|e| err(&e))?;
    }
    let chance = 100.0 / r.preset.fewshot.way as f64;
    finish_accuracy_chart(
        &root,
        &mut chart,
        (-0.5, n - 0.5),
        chance,
        SeriesLabelPosition::UpperRight,
        path,
    )
}

/// `alignment.png`: few-shot accuracy (host f32) against the novel classes' alignment, one line
/// per method (colour) and shot (solid: the largest shot, dashed: the others), 95% whiskers.
pub fn alignment_png(r: &StudyResults, path: &Path) -> Result<()> {
    trainer::plot::init_font();
    let err = draw_err(path);
    let methods: Vec<Backbone> = r.rows.iter().map(|x| x.method).collect();
    let shots = r.preset.fewshot.shots.clone();
    let top = r
        .alignment
        .iter()
        .flat_map(|c| c.fewshot.iter().filter_map(|f| f.1))
        .map(|f| f.value + f.ci95.unwrap_or(0.0))
        .fold(100.0 / r.preset.fewshot.way as f64, f64::max)
        * 1.1;
    let root = BitMapBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "{}-way few-shot vs task alignment (1 = novel classes defined like the base ones)",
                r.preset.fewshot.way
            ),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.05f64..1.05, 0f64..top.max(1.0))
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("alignment")
        .y_desc("accuracy (%)")
        .draw()
        .map_err(|e| err(&e))?;
    let last_shot = shots.last().copied();
    for (i, m) in methods.iter().enumerate() {
        let colour = Palette99::pick(i).to_rgba();
        for &k in &shots {
            let mut pts: Vec<(f64, f64, f64)> = r
                .alignment
                .iter()
                .filter(|c| &c.method == m)
                .filter_map(|c| {
                    let f = c.fewshot.iter().find(|f| f.0 == k)?.1?;
                    Some((c.alignment, f.value, f.ci95.unwrap_or(0.0)))
                })
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            if pts.is_empty() {
                continue;
            }
            let line: Vec<(f64, f64)> = pts.iter().map(|p| (p.0, p.1)).collect();
            let style = colour.stroke_width(if Some(k) == last_shot { 3 } else { 1 });
            let series = if Some(k) == last_shot {
                chart.draw_series(LineSeries::new(line, style))
            } else {
                chart.draw_series(DashedLineSeries::new(line, 6, 4, style))
            }
            .map_err(|e| err(&e))?;
            series
                .label(format!("{m} {k}-shot"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], style));
            chart
                .draw_series(pts.iter().map(|&(a, v, c)| {
                    PathElement::new(vec![(a, v - c), (a, v + c)], colour.stroke_width(1))
                }))
                .map_err(|e| err(&e))?;
        }
    }
    let chance = 100.0 / r.preset.fewshot.way as f64;
    finish_accuracy_chart(
        &root,
        &mut chart,
        (-0.05, 1.05),
        chance,
        SeriesLabelPosition::UpperLeft,
        path,
    )
}

/// The common end of the accuracy figures: the chance level as a grey line from `x0` to `x1`,
/// the series legend at `position`, and the image written to `path`.
fn finish_accuracy_chart<'a, 'b: 'a>(
    root: &DrawingArea<BitMapBackend<'b>, Shift>,
    chart: &mut ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    (x0, x1): (f64, f64),
    chance: f64,
    position: SeriesLabelPosition,
    path: &Path,
) -> Result<()> {
    let err = draw_err(path);
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(x0, chance), (x1, chance)],
            BLACK.mix(0.4),
        )))
        .map_err(|e| err(&e))?
        .label("chance")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], BLACK.mix(0.4)));
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Side of one face in `landmarks.png`.
const CELL: u32 = 128;
/// Width of the method-name column.
const LABEL_W: u32 = 130;

fn dot(img: &mut RgbImage, x: f32, y: f32, r: f32, c: [u8; 3]) {
    let (w, h) = img.dimensions();
    let (x0, x1) = (
        (x - r).floor().max(0.0) as u32,
        ((x + r).ceil() as u32).min(w.saturating_sub(1)),
    );
    let (y0, y1) = (
        (y - r).floor().max(0.0) as u32,
        ((y + r).ceil() as u32).min(h.saturating_sub(1)),
    );
    for py in y0..=y1 {
        for px in x0..=x1 {
            if (px as f32 - x).powi(2) + (py as f32 - y).powi(2) <= r * r {
                img.put_pixel(px, py, image::Rgb(c));
            }
        }
    }
}

/// The Figure-3 grid: one row per `(method, landmark model file)` (a missing file leaves its row
/// blank), `faces` MAFL test faces per row; ground truth green, prediction red.
pub fn landmarks_png(
    models: &[(String, PathBuf)],
    root: &Path,
    faces: usize,
    device: &Device,
    path: &Path,
) -> Result<()> {
    trainer::plot::init_font();
    let faces = faces.max(1);
    let (w, h) = (
        (LABEL_W + CELL * faces as u32).max(520),
        30 + CELL * models.len() as u32,
    );
    let mut canvas = RgbImage::from_pixel(w, h, image::Rgb([255, 255, 255]));
    for (row, (_, file)) in models.iter().enumerate() {
        if !file.is_file() {
            continue;
        }
        let model = LandmarkModel::open(file, device)
            .with_context(|| format!("opening {}", file.display()))?;
        for (col, f) in predict_mafl_test(&model, root, faces, device)?
            .iter()
            .enumerate()
        {
            let mut cell =
                image::imageops::resize(&f.crop, CELL, CELL, image::imageops::FilterType::Triangle);
            let scale = CELL as f32 / f.input_size as f32;
            for (pts, c) in [(&f.gt, [0, 200, 0]), (&f.pred, [230, 0, 0])] {
                for p in pts.iter() {
                    dot(&mut cell, p[0] * scale, p[1] * scale, 3.5, c);
                }
            }
            image::imageops::replace(
                &mut canvas,
                &cell,
                (LABEL_W + CELL * col as u32) as i64,
                (30 + CELL * row as u32) as i64,
            );
        }
    }
    let mut raw = canvas.into_raw();
    {
        let err = draw_err(path);
        let area = BitMapBackend::with_buffer(&mut raw, (w, h)).into_drawing_area();
        let style = ("sans-serif", 16).into_font().color(&BLACK);
        area.draw_text(
            "MAFL test faces: ground truth green, prediction red",
            &style,
            (LABEL_W as i32, 6),
        )
        .map_err(|e| err(&e))?;
        for (row, (m, file)) in models.iter().enumerate() {
            let label = if file.is_file() {
                m.clone()
            } else {
                format!("{m} (missing)")
            };
            area.draw_text(
                &label,
                &style,
                (6, (30 + CELL * row as u32 + CELL / 2) as i32),
            )
            .map_err(|e| err(&e))?;
        }
        area.present().map_err(|e| err(&e))?;
    }
    let img = RgbImage::from_raw(w, h, raw).context("internal: canvas size")?;
    let mut bytes = std::io::Cursor::new(Vec::new());
    img.write_to(&mut bytes, image::ImageFormat::Png)?;
    trainer::fsutil::write_atomic(path, bytes.get_ref())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_ci95_matches_a_hand_computation() {
        // x = 1, 2, 3: mean 2, population sd √(2/3), ci = 1.96·√(2/3)/√3 = 1.96·√2/3.
        let (m, c) = mean_ci95(&[1.0, 2.0, 3.0]).unwrap();
        assert!((m - 2.0).abs() < 1e-12);
        assert!((c - 1.96 * 2f64.sqrt() / 3.0).abs() < 1e-12);
        assert_eq!(mean_ci95(&[]), None);
        assert_eq!(mean_ci95(&[4.0]), Some((4.0, 0.0)));
    }

    #[test]
    fn per_image_errors_average_to_the_library_error() {
        let gt: Landmarks = [
            [10.0, 10.0],
            [20.0, 10.0],
            [15.0, 15.0],
            [12.0, 20.0],
            [18.0, 20.0],
        ];
        let mut off = gt;
        off[2][0] += 5.0; // nose off by half the inter-ocular distance → 50 / 5 = 10%.
        let mk = |pred| FacePrediction {
            crop: RgbImage::new(1, 1),
            input_size: 32,
            pred,
            gt,
        };
        let faces = vec![mk(gt), mk(off)];
        let (m, _) = per_image_iod(&faces).unwrap();
        let lib = iod_error(&[gt, off], &[gt, gt]).unwrap().iod_error;
        assert!((m - 5.0).abs() < 1e-9, "{m}");
        assert!((m - lib).abs() < 1e-9);
    }
}
