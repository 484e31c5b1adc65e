//! `host-trainer import`: a PyTorch ResNet checkpoint (torchvision, MoCo, any prefix) in, our
//! backbone safetensors out.
use anyhow::Context;
use clap::Args;
use exporter::import::{self, ImportRequest};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// PyTorch file (`.pth`, `.pth.tar`, `.pt`; torch.save's zip format): a state dict or a
    /// training checkpoint holding one.
    #[arg(long)]
    pub from: PathBuf,
    /// Output backbone file (safetensors with `resnet_config` metadata; written atomically).
    #[arg(long)]
    pub out: PathBuf,
    /// The prefix in front of the torchvision names, e.g. `module.encoder_q.` (default: found
    /// from the keys; `""` for none).
    #[arg(long)]
    pub prefix: Option<String>,
    /// The checkpoint entry holding the state dict (default: the top level, else `state_dict`,
    /// else `model`).
    #[arg(long)]
    pub key: Option<String>,
    /// Record this input size in the backbone (`image_size` metadata: export's default).
    #[arg(long)]
    pub image_size: Option<usize>,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: ImportArgs) -> anyhow::Result<()> {
    let req = ImportRequest {
        from: a.from.clone(),
        key: a.key,
        prefix: a.prefix,
        image_size: a.image_size,
    };
    let imp = import::import(&req).with_context(|| format!("importing {}", a.from.display()))?;
    let bytes = imp.to_safetensors_bytes()?;
    trainer::fsutil::write_atomic(&a.out, &bytes)
        .with_context(|| format!("writing {}", a.out.display()))?;
    let r = &imp.report;
    if a.json {
        let mut v = serde_json::to_value(r)?;
        v["out"] = serde_json::Value::String(a.out.display().to_string());
        println!("{v}");
        return Ok(());
    }
    println!(
        "import: {} -> {} | {} width {} {} stem, {} features, {} parameters | state dict {} prefix `{}`",
        a.from.display(),
        a.out.display(),
        r.arch,
        r.width,
        if r.small_stem { "small" } else { "imagenet" },
        r.feature_dim,
        r.parameters,
        r.key.as_deref().map_or("at the top level".to_string(), |k| format!("under `{k}`")),
        r.prefix,
    );
    println!("kept {} tensors", r.kept.len());
    let show = |title: &str, v: &[String]| {
        if !v.is_empty() {
            const MAX: usize = 12;
            let more = v.len().saturating_sub(MAX);
            let list = v.iter().take(MAX).cloned().collect::<Vec<_>>().join(", ");
            let tail = if more > 0 {
                format!(", … and {more} more")
            } else {
                String::new()
            };
            println!("{title} {}: {list}{tail}", v.len());
        }
    };
    show("dropped", &r.dropped);
    show("defaulted (absent from the file)", &r.defaulted);
    Ok(())
}
