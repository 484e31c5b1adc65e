//! `infer`: run a model on image files. Landmark models give 5 points on each image (in its own
//! pixels, pixel-centre convention; the image is MAFL-cropped first, as in `eval mafl`), optionally
//! drawn onto a PNG; features models give the feature vector and the index of its largest value
//! (the class, when the model ends in a classifier).
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use data::synth::preview::draw_dot;
use data::{Landmarks, LANDMARK_NAMES};
use image::RgbImage;
use runtime_core::heads::argmax;
use runtime_core::Task;
use serde_json::json;

use crate::engine::{self, Runner};
use crate::landmarks::{predict_on_aligned, predict_on_crop};

/// What one image gave.
#[derive(Debug, Clone, PartialEq)]
pub enum Prediction {
    Landmarks(Landmarks),
    Features {
        values: Vec<f32>,
        argmax: usize,
    },
    /// `--raw`: the int8 output tensor as the model computed it.
    Raw(Vec<i8>),
}

/// Options of the command.
#[derive(Debug, Clone)]
pub struct InferArgs {
    pub model: PathBuf,
    pub images: Vec<PathBuf>,
    pub draw: Option<PathBuf>,
    /// Feed pixels as they are: the image must be the model's input size (no crop, no resize).
    pub exact_size: bool,
    /// Report the raw int8 output tensor instead of decoding it.
    pub raw: bool,
    /// `images` are files of the input tensor's int8 bytes (`--input-raw`), not images.
    pub input_raw: bool,
}

/// Dot colours as in host-trainer's face previews: red left eye, green right eye, blue nose,
/// yellow left and magenta right mouth corner.
const COLOURS: [[u8; 3]; 5] = [
    [255, 0, 0],
    [0, 255, 0],
    [0, 0, 255],
    [255, 255, 0],
    [255, 0, 255],
];

/// Runs the model on every image, in order.
pub fn run(a: &InferArgs) -> Result<(Task, Vec<Prediction>)> {
    if a.images.is_empty() {
        bail!("no image given");
    }
    let bytes = engine::read_model(&a.model)?;
    let model = engine::parse_model(&bytes, &a.model)?;
    if a.draw.is_some() {
        engine::require_task(&model, &a.model, Task::Landmarks, "infer --draw")?;
        if a.images.len() != 1 {
            bail!(
                "--draw writes one PNG: give exactly one image (got {})",
                a.images.len()
            );
        }
    }
    if a.raw && model.dtype() != runtime_core::Dtype::Int8 {
        bail!(
            "{}: --raw prints the int8 output tensor, but this is an f32 model",
            a.model.display()
        );
    }
    if a.input_raw {
        return Ok((model.task(), run_raw_inputs(&model, a)?));
    }
    let mut runner = Runner::new(&model);
    let mut preds = Vec::with_capacity(a.images.len());
    let mut first_img = None;
    for path in &a.images {
        let img = engine::load_image(path)?;
        if a.raw {
            let x = if a.exact_size {
                runner.exact_input(&img, path)?
            } else {
                runner.normalised_input(&img)
            };
            preds.push(Prediction::Raw(runner.run_raw_i8(&x)?.to_vec()));
            continue;
        }
        let p = match model.task() {
            Task::Landmarks if a.exact_size => {
                // Size check only: a same-size resize is the identity, bit for bit.
                runner.exact_input(&img, path)?;
                predict_on_crop(&mut runner, &img)?
            }
            Task::Landmarks => predict_on_aligned(&mut runner, &img)?,
            Task::Features => {
                let x = if a.exact_size {
                    runner.exact_input(&img, path)?
                } else {
                    runner.normalised_input(&img)
                };
                let values = runner.run_normalised(&x)?.to_vec();
                preds.push(Prediction::Features {
                    argmax: argmax(&values),
                    values,
                });
                continue;
            }
        };
        preds.push(Prediction::Landmarks(p));
        if first_img.is_none() {
            first_img = Some(img);
        }
    }
    if let (Some(out), Some(img), Some(Prediction::Landmarks(l))) =
        (&a.draw, first_img, preds.first())
    {
        draw(&img, l, out)?;
    }
    Ok((model.task(), preds))
}

/// `--input-raw`: each file's bytes are the int8 input tensor, run as they are.
fn run_raw_inputs(model: &runtime_core::Model, a: &InferArgs) -> Result<Vec<Prediction>> {
    if model.dtype() != runtime_core::Dtype::Int8 {
        bail!(
            "{}: --input-raw feeds an int8 input tensor, but this is an f32 model",
            a.model.display()
        );
    }
    let mut arena = vec![0u8; model.arena_bytes()];
    a.images
        .iter()
        .map(|path| {
            let bytes = std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("{}: cannot read the input tensor: {e}", path.display()))?;
            let [h, w, c] = model.input_shape();
            if bytes.len() != model.input_len() {
                bail!(
                    "{}: {} bytes, but the model's int8 input tensor is {h}x{w}x{c} = {} bytes (NHWC)",
                    path.display(),
                    bytes.len(),
                    model.input_len()
                );
            }
            let x: Vec<i8> = bytes.iter().map(|&b| b as i8).collect();
            let y = model
                .run_int8_raw(&x, &mut arena)
                .map_err(|e| anyhow::anyhow!("{}: inference: {e}", path.display()))?;
            Ok(Prediction::Raw(y.to_vec()))
        })
        .collect()
}

/// Writes `img` (enlarged so small faces stay visible) with the landmarks as coloured dots.
pub fn draw(img: &RgbImage, l: &Landmarks, out: &Path) -> Result<()> {
    let k = (256 / img.width().max(img.height()).max(1)).max(1);
    let mut big = image::imageops::resize(
        img,
        img.width() * k,
        img.height() * k,
        image::imageops::FilterType::Nearest,
    );
    let r = (big.width().max(big.height()) as f32 / 64.0).max(1.5);
    for (p, c) in l.iter().zip(COLOURS) {
        draw_dot(&mut big, [p[0] * k as f32, p[1] * k as f32], r, c);
    }
    let mut bytes = Vec::new();
    big.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .map_err(|e| anyhow!("{}: cannot encode PNG: {e}", out.display()))?;
    data::fsutil::write_atomic(out, &bytes)
        .map_err(|e| anyhow!("{}: cannot write: {e}", out.display()))
}

/// `--json` form.
pub fn to_json(a: &InferArgs, task: Task, preds: &[Prediction]) -> serde_json::Value {
    let results: Vec<_> = a
        .images
        .iter()
        .zip(preds)
        .map(|(path, p)| match p {
            Prediction::Landmarks(l) => {
                let m: serde_json::Map<_, _> = LANDMARK_NAMES
                    .iter()
                    .zip(l)
                    .map(|(n, p)| (n.to_string(), json!(p)))
                    .collect();
                json!({"image": path.display().to_string(), "landmarks": m})
            }
            Prediction::Features { values, argmax } => {
                json!({"image": path.display().to_string(), "features": values, "argmax": argmax})
            }
            Prediction::Raw(values) => {
                json!({"image": path.display().to_string(), "raw_int8": values})
            }
        })
        .collect();
    json!({
        "command": "infer",
        "model": a.model.display().to_string(),
        "task": engine::task_name(task),
        "drawn": a.draw.as_ref().map(|p| p.display().to_string()),
        "results": results,
    })
}

/// Human form.
pub fn to_text(a: &InferArgs, preds: &[Prediction]) -> String {
    let mut s = String::new();
    for (path, p) in a.images.iter().zip(preds) {
        s += &format!("{}:", path.display());
        match p {
            Prediction::Landmarks(l) => {
                for (n, p) in LANDMARK_NAMES.iter().zip(l) {
                    s += &format!(" {n}=({:.2}, {:.2})", p[0], p[1]);
                }
            }
            Prediction::Features { values, argmax } => {
                let shown: Vec<String> = values.iter().take(8).map(|v| format!("{v:.4}")).collect();
                s += &format!(
                    " argmax={argmax} features[{}]=[{}{}]",
                    values.len(),
                    shown.join(", "),
                    if values.len() > 8 { ", …" } else { "" }
                );
            }
            Prediction::Raw(values) => {
                let all: Vec<String> = values.iter().map(i8::to_string).collect();
                s += &format!(" raw_int8[{}]=[{}]", values.len(), all.join(", "));
            }
        }
        s.push('\n');
    }
    if let Some(d) = &a.draw {
        s += &format!("drawn: {}\n", d.display());
    }
    s.trim_end().to_string()
}
