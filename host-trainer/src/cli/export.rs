//! `host-trainer export`: fold BN, calibrate, quantise, write the runtime model file.
use anyhow::Context;
use clap::Args;
use exporter::export::{self, CalibMethod, ExportOptions, ExportRequest};
use runtime_core::Dtype;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// A backbone (`resnet_config` metadata) or landmark model (`landmark_model` metadata)
    /// saved by host-trainer. With `--onnx` and/or `--tflite` only, also an exported runtime
    /// model (`rt.graph` metadata), which is then converted as it is.
    #[arg(long)]
    pub model: PathBuf,
    /// Calibration dataset root: CelebA (MAFL training list, cropped), mini-ImageNet CSV (train
    /// split) or ImageFolder. Required for int8.
    #[arg(long)]
    pub calib_data: Option<PathBuf>,
    /// Number of calibration images, drawn deterministically; more than the dataset has is an error.
    #[arg(long, default_value_t = 100)]
    pub calib_images: usize,
    /// How each activation tensor's int8 range is chosen from the calibration images: `minmax`,
    /// `percentile` (clip at --percentile), `mse` (the clip with the least quantisation MSE per
    /// tensor) or `kl` (TensorRT's entropy calibration). Default: the exporter's
    /// `export::DEFAULT_CALIB` (README "int8 calibration" has the measurements); `--percentile`
    /// alone means `percentile`.
    #[arg(long, value_enum)]
    pub calib: Option<CalibArg>,
    /// Clip activation ranges at the (100−P)-th/P-th percentiles (`--calib percentile`, default
    /// 99.9); 100 = plain min/max.
    #[arg(long)]
    pub percentile: Option<f32>,
    /// Backbone input side in pixels (default: the file's `image_size` metadata, else 32).
    /// Landmark models always use their own input size.
    #[arg(long)]
    pub image_size: Option<usize>,
    /// Seed of the calibration image draw.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output runtime model file (written atomically). At least one of `--out`, `--onnx` and
    /// `--tflite`.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Also (or only) write the exported model as standard ONNX (opset 13; int8 as
    /// QLinearConv/QuantizeLinear/DequantizeLinear), the very parameters of the runtime file.
    #[arg(long, value_name = "PATH")]
    pub onnx: Option<PathBuf>,
    /// Also (or only) write the exported int8 model as a TFLite flatbuffer (builtin int8 ops,
    /// per-channel weights) that TFLite Micro runs bit for bit as runtime-core does; int8 only.
    #[arg(long, value_name = "PATH")]
    pub tflite: Option<PathBuf>,
    /// Write the same graph unquantised (f32); no calibration.
    #[arg(long)]
    pub f32: bool,
}

/// The `--calib` values.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CalibArg {
    Minmax,
    Percentile,
    Mse,
    Kl,
}

/// `--calib` and `--percentile` as one method; a percentile with another method is an error.
pub fn calib_method(
    calib: Option<CalibArg>,
    percentile: Option<f32>,
) -> anyhow::Result<CalibMethod> {
    let p = percentile.unwrap_or(export::DEFAULT_PERCENTILE);
    Ok(match (calib, percentile) {
        (None, None) => export::DEFAULT_CALIB,
        (None | Some(CalibArg::Percentile), _) => CalibMethod::Percentile(p),
        (Some(m), Some(_)) => {
            anyhow::bail!("--percentile only applies to --calib percentile (got --calib {m:?})")
        }
        (Some(CalibArg::Minmax), None) => CalibMethod::MinMax,
        (Some(CalibArg::Mse), None) => CalibMethod::Mse,
        (Some(CalibArg::Kl), None) => CalibMethod::Kl,
    })
}

pub fn run(a: ExportArgs) -> anyhow::Result<()> {
    if a.out.is_none() && a.onnx.is_none() && a.tflite.is_none() {
        anyhow::bail!(
            "export needs --out PATH (runtime model), --onnx PATH, --tflite PATH, or several"
        );
    }
    if a.tflite.is_some() && a.f32 {
        anyhow::bail!("--tflite writes int8 models only; drop --f32");
    }
    if (a.onnx.is_some() || a.tflite.is_some()) && export::onnx::is_runtime_model(&a.model)? {
        // An already-exported runtime model converts as it is (no calibration).
        if a.out.is_some() {
            anyhow::bail!(
                "{} is already a runtime model: give only --onnx/--tflite to convert it",
                a.model.display()
            );
        }
        let bytes =
            std::fs::read(&a.model).with_context(|| format!("reading {}", a.model.display()))?;
        if let Some(onnx) = &a.onnx {
            write_onnx(&a.model, &bytes, onnx)?;
        }
        if let Some(tflite) = &a.tflite {
            write_tflite(&a.model, &bytes, tflite)?;
        }
        return Ok(());
    }
    let calib = calib_method(a.calib, a.percentile)?;
    let req = ExportRequest {
        model: a.model.clone(),
        calib_data: a.calib_data,
        calib_images: a.calib_images,
        image_size: a.image_size,
        seed: a.seed,
        opts: ExportOptions {
            dtype: if a.f32 { Dtype::F32 } else { Dtype::Int8 },
            calib,
        },
    };
    let e =
        export::export_file(&req).with_context(|| format!("exporting {}", a.model.display()))?;
    let out = a.out.as_ref().map(|p| p.display().to_string());
    if let Some(p) = &a.out {
        trainer::fsutil::write_atomic(p, &e.bytes)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    let s = &e.summary;
    println!(
        "export: {} -> {} ({:?}, {:?}) input {}x{}x{} output {} | {} ops, {:.2} M MACs, weights {} B, arena {} B, file {} B | \
         calibration: {} ranges from {} images ({}), {} clamped biases",
        a.model.display(),
        out.as_deref().unwrap_or("(no runtime file)"),
        s.task,
        s.dtype,
        s.input_shape[0],
        s.input_shape[1],
        s.input_shape[2],
        s.output_len,
        s.ops,
        s.macs as f64 / 1e6,
        s.weight_bytes,
        s.arena_bytes,
        s.file_bytes,
        s.calibrated_tensors,
        s.calibration_images,
        if s.dtype == Dtype::Int8 { calib.describe() } else { "none".into() },
        s.clamped_biases
    );
    if let Some(onnx) = &a.onnx {
        write_onnx(&a.model, &e.bytes, onnx)?;
    }
    if let Some(tflite) = &a.tflite {
        write_tflite(&a.model, &e.bytes, tflite)?;
    }
    Ok(())
}

/// Converts runtime model bytes (from `source`) to `.tflite` and writes them atomically; prints
/// each op TFLite cannot reproduce bit for bit (none for the project's exports so far).
fn write_tflite(source: &Path, runtime_bytes: &[u8], out: &Path) -> anyhow::Result<()> {
    let t = export::tflite::to_tflite(runtime_bytes)
        .with_context(|| format!("converting {} to TFLite", source.display()))?;
    trainer::fsutil::write_atomic(out, &t.bytes)
        .with_context(|| format!("writing {}", out.display()))?;
    println!(
        "export: {} -> {} (TFLite schema {}, {} B; {})",
        source.display(),
        out.display(),
        export::tflite::SCHEMA_VERSION,
        t.bytes.len(),
        if t.notes.is_empty() {
            "TFLite derives every op's parameters as the runtime file has them".to_string()
        } else {
            format!("{} op(s) not bit-exact, below", t.notes.len())
        }
    );
    for n in &t.notes {
        println!("  tflite: {n}");
    }
    Ok(())
}

/// Converts runtime model bytes (from `source`) to ONNX and writes them atomically.
fn write_onnx(source: &Path, runtime_bytes: &[u8], out: &Path) -> anyhow::Result<()> {
    let bytes = export::onnx::to_onnx(runtime_bytes)
        .with_context(|| format!("converting {} to ONNX", source.display()))?;
    trainer::fsutil::write_atomic(out, &bytes)
        .with_context(|| format!("writing {}", out.display()))?;
    println!(
        "export: {} -> {} (ONNX opset {}, {} B)",
        source.display(),
        out.display(),
        export::onnx::OPSET,
        bytes.len()
    );
    Ok(())
}
