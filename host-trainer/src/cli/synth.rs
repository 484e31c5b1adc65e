//! `host-trainer synth objects|faces`: generate the embedded default datasets.
use anyhow::Context;
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::time::Instant;
use trainer::data::synth::{faces, objects, preview};

#[derive(Subcommand, Debug)]
pub enum SynthCommand {
    /// A mini-ImageNet-like object set: `images/`, `train.csv`, `val.csv`, `test.csv`
    /// (classes split 64%/16%/20%; novel classes combine shape, texture, palette and parts in
    /// ways no base class does).
    Objects(ObjectsArgs),
    /// A CelebA/MAFL-like face set: `img_align_celeba/`, the CelebA identity, landmark and
    /// partition lists, `MAFL/training.txt` and `MAFL/testing.txt`, with exact landmarks.
    Faces(FacesArgs),
}

#[derive(Args, Debug)]
pub struct ObjectsArgs {
    /// Output directory (created; existing files with the same names are replaced).
    #[arg(long)]
    pub out: PathBuf,
    /// Number of classes, split 64%/16%/20% (rounded) into train/val/test; at most 300.
    #[arg(long, default_value_t = 100)]
    pub classes: usize,
    /// Images per class.
    #[arg(long, default_value_t = 60)]
    pub per_class: usize,
    /// Image side in pixels (square images).
    #[arg(long, default_value_t = 32)]
    pub size: u32,
    /// Seed: same seed and arguments give byte-identical files, whatever the thread count.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Fraction of the novel (val/test) classes defined by object factors, as the base classes
    /// are; the rest are defined by the scene (backdrop, hue, clutter family), which varies
    /// freely within base classes. 1 = aligned (the default), 0 = fully misaligned. The train
    /// split does not depend on it.
    #[arg(long, default_value_t = 1.0)]
    pub alignment: f64,
    /// Also write a contact sheet PNG (8 classes × 8 instances) to this file.
    #[arg(long)]
    pub preview: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct FacesArgs {
    /// Output directory (created; existing files with the same names are replaced).
    #[arg(long)]
    pub out: PathBuf,
    /// Number of identities.
    #[arg(long, default_value_t = 200)]
    pub identities: usize,
    /// Images per identity.
    #[arg(long, default_value_t = 20)]
    pub per_identity: usize,
    /// Image width in pixels; the height is round(size·218/178), CelebA's aspect.
    #[arg(long, default_value_t = 48)]
    pub size: u32,
    /// Seed: same seed and arguments give byte-identical files, whatever the thread count.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also write a contact sheet PNG (8 identities × 8 images, landmarks as coloured dots).
    #[arg(long)]
    pub preview: Option<PathBuf>,
}

pub fn run(cmd: SynthCommand) -> anyhow::Result<()> {
    match cmd {
        SynthCommand::Objects(a) => {
            let cfg = objects::ObjectsConfig {
                classes: a.classes,
                per_class: a.per_class,
                size: a.size,
                seed: a.seed,
                alignment: a.alignment,
            };
            let t = Instant::now();
            let s = objects::generate_objects(&cfg, &a.out)
                .with_context(|| format!("synth objects into {}", a.out.display()))?;
            let [tr, va, te] = s.per_split;
            println!(
                "objects: {} train {} classes/{} images, val {}/{}, test {}/{}, {}x{} px, seed {}, {:.1} s",
                a.out.display(),
                tr.0,
                tr.1,
                va.0,
                va.1,
                te.0,
                te.1,
                a.size,
                a.size,
                a.seed,
                t.elapsed().as_secs_f64()
            );
            if let Some(p) = a.preview {
                preview::objects_preview(&cfg, &p)
                    .with_context(|| format!("writing preview {}", p.display()))?;
                println!("preview: {}", p.display());
            }
        }
        SynthCommand::Faces(a) => {
            let cfg = faces::FacesConfig {
                identities: a.identities,
                per_identity: a.per_identity,
                size: a.size,
                seed: a.seed,
            };
            let t = Instant::now();
            let s = faces::generate_faces(&cfg, &a.out)
                .with_context(|| format!("synth faces into {}", a.out.display()))?;
            println!(
                "faces: {} {} images of {} identities, {}x{} px, partitions train/val/test {}/{}/{}, MAFL train {} test {}, \
                 pretraining {}, seed {}, {:.1} s",
                a.out.display(),
                s.images,
                s.identities,
                a.size,
                faces::image_height(a.size),
                s.partitions[0],
                s.partitions[1],
                s.partitions[2],
                s.mafl_train,
                s.mafl_test,
                s.pretrain,
                a.seed,
                t.elapsed().as_secs_f64()
            );
            if let Some(p) = a.preview {
                preview::faces_preview(&cfg, &p)
                    .with_context(|| format!("writing preview {}", p.display()))?;
                println!("preview: {}", p.display());
            }
        }
    }
    Ok(())
}
