//! `host-trainer invert`: feature inversion with the deep image prior (paper Figure 2);
//! argument parsing and printing, the work is in `study::analysis::invert`.
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;
use study::analysis::invert::{self, FeatureTarget, InversionInput, InvertConfig};
use study::analysis::similarity::RandomFeatureDistance;
use study::study::inversion::{save_png, write_grid};

/// Reconstruct images from a backbone's features: a randomly initialised generator is optimised
/// so that the backbone's features of its output match the image's (deep image prior, Adam).
/// Writes each reconstruction, a grid (rows: the images, then each backbone) and invert.json
/// with the scores (SSIM, worst-quarter SSIM, distance under a fixed random network) and the
/// loss curve.
#[derive(Args, Debug)]
pub struct InvertArgs {
    /// Backbone file, optionally named: `NAME=PATH` (default name: the file's folder). Repeat to
    /// compare backbones on the same images with the same generator initialisation.
    #[arg(long, required = true)]
    pub backbone: Vec<String>,
    /// Image file (PNG or JPEG). Repeat for several.
    #[arg(long, required = true)]
    pub image: Vec<PathBuf>,
    /// Model input side (the image is stretched to it, as in evaluation).
    #[arg(long, default_value_t = 32)]
    pub image_size: usize,
    /// Adam steps per image (the paper: 3000).
    #[arg(long, default_value_t = 3000)]
    pub iterations: usize,
    #[arg(long, default_value_t = 0.001)]
    pub lr: f64,
    /// Which features are matched: map (the last stage before pooling, as the paper) or pooled.
    #[arg(long, default_value = "map")]
    pub features: FeatureTarget,
    /// Seeds the generator and its input noise (image k uses seed·1000003 + k).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output folder: NAME/<k>.png, grid.png, invert.json.
    #[arg(long)]
    pub out: PathBuf,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Print only the JSON result.
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

fn named(spec: &str) -> (String, PathBuf) {
    match spec.split_once('=') {
        Some((n, p)) if !n.is_empty() => (n.to_string(), PathBuf::from(p)),
        _ => {
            let p = PathBuf::from(spec);
            let name = p
                .parent()
                .and_then(|d| d.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "backbone".into());
            (name, p)
        }
    }
}

pub fn run(a: InvertArgs) -> Result<()> {
    if a.iterations == 0 {
        bail!("--iterations must be at least 1");
    }
    let device = trainer::device::parse_device(&a.device)?;
    let backbones: Vec<(String, PathBuf)> = a.backbone.iter().map(|s| named(s)).collect();
    for (i, (n, _)) in backbones.iter().enumerate() {
        if backbones[..i].iter().any(|(m, _)| m == n) {
            bail!("--backbone: the name {n:?} is used twice; name them NAME=PATH");
        }
    }
    let mut inputs = Vec::new();
    for path in &a.image {
        let img =
            trainer::data::load_rgb(path).with_context(|| format!("--image {}", path.display()))?;
        inputs.push(InversionInput::from_image(&img, a.image_size)?);
    }
    let dist = RandomFeatureDistance::new(&device)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let total = (backbones.len() * inputs.len() * a.iterations) as u64;
    let bar = (!a.quiet && !a.json).then(|| {
        let b = indicatif::ProgressBar::new(total);
        b.set_style(
            indicatif::ProgressStyle::with_template("invert {bar:30} {pos}/{len} {msg} ({eta})")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let mut rows = vec![(
        "image".to_string(),
        inputs
            .iter()
            .map(|i| invert::to_rgb(&i.pixels, i.side))
            .collect::<Result<Vec<_>>>()?,
    )];
    let mut results = Vec::new();
    for (name, path) in &backbones {
        let (net, hash) = transfer_eval::open_backbone(path, &device)?;
        let dir = a.out.join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut recs = Vec::new();
        let mut images = Vec::new();
        for (k, input) in inputs.iter().enumerate() {
            let cfg = InvertConfig {
                iterations: a.iterations,
                lr: a.lr,
                seed: a.seed.wrapping_mul(1_000_003).wrapping_add(k as u64),
                target: a.features,
                log_every: (a.iterations / 20).max(1),
            };
            let inv = invert::invert(&net, input, &cfg, &mut |_, l| {
                if let Some(b) = &bar {
                    b.inc(1);
                    b.set_message(format!("{name} image {k}: loss {l:.3}"));
                }
            })?;
            let s = invert::score(input, &inv.reconstruction, &dist, &device)?;
            let rgb = invert::to_rgb(&inv.reconstruction, input.side)?;
            let png = dir.join(format!("{k}.png"));
            save_png(&rgb, &png)?;
            recs.push(rgb);
            images.push(json!({
                "image": a.image[k], "png": png, "initial_loss": inv.initial_loss(),
                "final_loss": inv.final_loss(), "losses": inv.losses, "ssim": s.ssim,
                "ssim_worst_quarter": s.ssim_worst_quarter,
                "random_feature_distance": s.random_feature_distance,
            }));
        }
        rows.push((name.clone(), recs));
        results.push(
            json!({"name": name, "backbone": path, "backbone_fnv64": hash, "images": images}),
        );
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let grid = a.out.join("grid.png");
    write_grid(&rows, "Feature inversion (deep image prior)", &grid)?;
    let v = json!({
        "iterations": a.iterations, "lr": a.lr, "features": a.features, "seed": a.seed,
        "image_size": a.image_size, "grid": grid, "backbones": results,
        "distance": "SSIM (Gaussian 11x11, sigma 1.5) and an LPIPS-style distance under a fixed random ResNet-18",
    });
    transfer_eval::write_result(&a.out, "invert.json", &v)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "backbone | image | loss start → end | SSIM | worst-quarter SSIM | random-network distance"
    );
    for r in &results {
        for (k, i) in r["images"].as_array().into_iter().flatten().enumerate() {
            let f = |key: &str| i[key].as_f64().unwrap_or(f64::NAN);
            println!(
                "{} | {k} | {:.3} → {:.3} | {:.3} | {:.3} | {:.3}",
                r["name"].as_str().unwrap_or("?"),
                f("initial_loss"),
                f("final_loss"),
                f("ssim"),
                f("ssim_worst_quarter"),
                f("random_feature_distance")
            );
        }
    }
    println!("grid: {}", grid.display());
    Ok(())
}
