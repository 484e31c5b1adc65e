//! `host-trainer pretrain`: argument parsing; the work is `trainer::train::pretrain`.
use std::path::PathBuf;

use clap::Args;

/// Pretrain a ResNet backbone with supervised cross-entropy, MoCo or Exemplar.
///
/// Unset hyper-parameters take the method's defaults (MoCo v1/v2 papers; Exemplar per the paper):
/// tau 0.07 (v1) / 0.2 (MoCo v2) / 0.1 (Exemplar v2); lr 0.03 per 256 images (0.1 for supervised),
/// scaled linearly with --batch-size; step schedule for v1, cosine for v2 and supervised.
#[derive(Args, Debug)]
pub struct PretrainArgs {
    /// supervised | moco | exemplar
    #[arg(long, required_unless_present = "resume")]
    pub method: Option<String>,
    /// v1 | v2 (MoCo and Exemplar; default v2)
    #[arg(long)]
    pub version: Option<String>,
    /// Dataset root: a mini-ImageNet folder (train.csv...), a CelebA folder (identity_CelebA.txt...),
    /// or an ImageFolder (one sub-folder per class).
    #[arg(long, required_unless_present = "resume")]
    pub data: Option<PathBuf>,
    /// resnet18 | resnet34 | resnet50
    #[arg(long, default_value = "resnet18")]
    pub arch: String,
    /// Width multiplier of the ResNet's channels (1.0 = torchvision; 0.25 for tiny CPU models).
    #[arg(long, default_value_t = 1.0)]
    pub width: f32,
    /// Use the ImageNet stem (7x7 stride-2 conv + max-pool) instead of the small-image stem.
    #[arg(long)]
    pub imagenet_stem: bool,
    /// Training image size (square) after augmentation.
    #[arg(long, default_value_t = 32)]
    pub image_size: usize,
    #[arg(long, default_value_t = 100)]
    pub epochs: usize,
    /// Set when --epochs was given explicitly (a resumed run then extends to it).
    #[arg(skip)]
    pub epochs_set: bool,
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// Learning rate for this batch size (default: the method's base lr scaled by batch/256).
    #[arg(long)]
    pub lr: Option<f64>,
    /// SGD weight decay (default 1e-4).
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Queue length K (MoCo/Exemplar); must be a multiple of --batch-size.
    #[arg(long)]
    pub queue: Option<usize>,
    /// Softmax temperature (MoCo/Exemplar).
    #[arg(long)]
    pub tau: Option<f64>,
    /// Key-encoder EMA momentum m (MoCo/Exemplar; default 0.999).
    #[arg(long)]
    pub momentum: Option<f64>,
    /// Embedding dimension of the projection head (default 128).
    #[arg(long)]
    pub dim: Option<usize>,
    /// Augmentations, comma-separated from hflip,rrc,jitter,gray,blur (or `none`); default per method.
    #[arg(long)]
    pub aug: Option<String>,
    /// Number of BN groups for single-device shuffle-BN (MoCo/Exemplar; default 8); 1 turns it off.
    #[arg(long)]
    pub bn_groups: Option<usize>,
    /// Turn shuffle-BN emulation off (same as --bn-groups 1).
    #[arg(long)]
    pub no_shuffle_bn: bool,
    /// Split each step's batch over N threads, each with whole BN groups and single-threaded
    /// kernels, gradients summed in a fixed order (deterministic for a given N; stored in the
    /// run, so --resume keeps it). Default: one per available core on the CPU, 1 on CUDA.
    /// With --distributed: the replicas of each process (default 1), the run has N x ranks.
    #[arg(long, value_name = "N")]
    pub replicas: Option<usize>,
    /// `mpi`: this process is one rank of `mpirun -np R host-trainer pretrain ...`; the run's
    /// replicas are spread over the ranks (byte-identical weights to the same number of
    /// replicas in one process), rank 0 writes the files. Needs a build with `--features mpi`.
    /// `nccl`: one process per GPU, started by torchrun, srun or mpirun (RANK / WORLD_SIZE /
    /// LOCAL_RANK or the launcher's own, MASTER_ADDR / MASTER_PORT), each on cuda:LOCAL_RANK.
    /// Needs a build with `--features nccl` (or `cudnn,nccl`).
    #[arg(long, value_name = "KIND")]
    pub distributed: Option<String>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// cpu | cuda:N (default cpu; with --distributed nccl, the rank's own GPU)
    #[arg(long)]
    pub device: Option<String>,
    /// Output folder: last.safetensors (resumable), backbone.safetensors, metrics.jsonl.
    /// With --resume it defaults to (and must be) the resumed folder.
    #[arg(long, required_unless_present = "resume")]
    pub out: Option<PathBuf>,
    /// Continue the run saved in this folder (its config is reused; --epochs may extend it).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Stop after this many epochs of this invocation (the run stays resumable).
    #[arg(long)]
    pub stop_after: Option<usize>,
    /// Draw the loss and kNN curves to OUT/curves.png at the end; for MoCo and Exemplar also
    /// OUT/trajectory.png, the loss / chance against images seen beside the MoCo CIFAR-10 demo.
    #[arg(long)]
    pub plot: bool,
    /// Number of images of the held-out split used by the kNN monitor (0 = off).
    #[arg(long, default_value_t = 1000)]
    pub knn_images: usize,
    /// Write a metrics.jsonl line every this many steps.
    #[arg(long, default_value_t = 10)]
    pub log_every: usize,
    /// No progress bars or per-epoch lines on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// MoCo/Exemplar diagnostic: after every N epochs (and the last), score one batch against the
    /// queue as training left it and against the same key views re-encoded by the current key
    /// encoder, into metrics.jsonl and the summary (`queue_probe`). 0 = off. Changes nothing in
    /// the run.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub probe_queue_every: usize,
}

/// Run (or resume) a pretraining job and print its summary.
pub fn run(a: PretrainArgs) -> anyhow::Result<()> {
    use trainer::train::pretrain::RunOptions;

    // `--distributed nccl` chooses the device: this rank's GPU, from the launcher's variables.
    let nccl = match a.distributed.as_deref() {
        Some("nccl") => Some(nccl_rank(a.device.as_deref())?),
        _ => None,
    };
    let device = match &nccl {
        Some((_, ordinal)) => trainer::device::parse_device(&format!("cuda:{ordinal}"))?,
        None => trainer::device::parse_device(a.device.as_deref().unwrap_or("cpu"))?,
    };
    let out = match (&a.resume, &a.out) {
        (Some(r), Some(o)) if r != o => anyhow::bail!(
            "--resume {} continues in its own folder; drop --out or pass the same path",
            r.display()
        ),
        (Some(r), _) => r.clone(),
        (None, Some(o)) => o.clone(),
        (None, None) => anyhow::bail!("--out is required for a new run"),
    };
    let distributed = match (a.distributed.as_deref(), &nccl) {
        (_, Some((env, ordinal))) => Some(nccl_comm(env, *ordinal)?),
        (None | Some("none"), None) => None,
        (Some("mpi"), None) => Some(mpi_comm()?),
        (Some(other), None) => {
            anyhow::bail!("--distributed {other}: expected `mpi` or `nccl` (or `none`)")
        }
    };
    let opts = RunOptions {
        out,
        device,
        stop_after: a.stop_after,
        progress: !a.quiet,
        probe_queue_every: a.probe_queue_every,
        distributed: distributed.clone(),
    };
    let result = run_with(&a, &opts);
    match (&result, &distributed) {
        // A rank that fails alone would leave the others waiting in their next exchange: say
        // which rank failed and why, then end every rank of the run.
        (Err(e), Some(comm)) => {
            eprintln!("error ({}): {e:#}", comm.describe());
            comm.abort(1)
        }
        _ => result,
    }
}

#[cfg(feature = "mpi")]
fn mpi_comm() -> anyhow::Result<std::sync::Arc<dyn trainer::train::comm::Comm>> {
    Ok(std::sync::Arc::new(
        trainer::train::comm::mpi::MpiComm::init()?,
    ))
}

#[cfg(not(feature = "mpi"))]
fn mpi_comm() -> anyhow::Result<std::sync::Arc<dyn trainer::train::comm::Comm>> {
    anyhow::bail!(
        "--distributed mpi: this host-trainer was built without MPI; build it with \
         `cargo build --release -p host-trainer --features mpi` (scripts/setup.sh installs OpenMPI)"
    )
}

/// Where this process sits in an NCCL run (the launcher's variables) and the CUDA ordinal it
/// trains on (`--device`, if given, must name it); the communicator follows once the device
/// is open ([`nccl_comm`]).
#[cfg(feature = "nccl")]
fn nccl_rank(
    device: Option<&str>,
) -> anyhow::Result<(trainer::train::comm::launch_env::LaunchEnv, usize)> {
    let env = trainer::train::comm::launch_env::LaunchEnv::from_env()?;
    let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
    let ordinal = env.cuda_ordinal(visible.as_deref(), device)?;
    Ok((env, ordinal))
}

#[cfg(feature = "nccl")]
fn nccl_comm(
    env: &trainer::train::comm::launch_env::LaunchEnv,
    ordinal: usize,
) -> anyhow::Result<std::sync::Arc<dyn trainer::train::comm::Comm>> {
    Ok(std::sync::Arc::new(
        trainer::train::comm::nccl::NcclComm::init(env, ordinal)?,
    ))
}

#[cfg(not(feature = "nccl"))]
fn nccl_rank(
    _device: Option<&str>,
) -> anyhow::Result<(trainer::train::comm::launch_env::LaunchEnv, usize)> {
    Err(no_nccl())
}

#[cfg(not(feature = "nccl"))]
fn nccl_comm(
    _env: &trainer::train::comm::launch_env::LaunchEnv,
    _ordinal: usize,
) -> anyhow::Result<std::sync::Arc<dyn trainer::train::comm::Comm>> {
    Err(no_nccl())
}

#[cfg(not(feature = "nccl"))]
fn no_nccl() -> anyhow::Error {
    anyhow::anyhow!(
        "--distributed nccl: this host-trainer was built without NCCL; build it with \
         `cargo build --profile gpu -p host-trainer --features cudnn,nccl` (scripts/gpu_check.sh \
         --build does, with scripts/nccl-env.sh for libnccl)"
    )
}

fn run_with(a: &PretrainArgs, opts: &trainer::train::pretrain::RunOptions) -> anyhow::Result<()> {
    use trainer::method::Method;
    use trainer::model::{Arch, ResNetConfig};
    use trainer::train::pretrain::{self, PretrainRequest};
    let ranks = opts.distributed.as_ref().map_or(1, |c| c.size());
    let root = opts.distributed.as_ref().is_none_or(|c| c.rank() == 0);
    let summary = if let Some(dir) = &a.resume {
        if a.replicas.is_some() {
            anyhow::bail!(
                "--replicas is part of the run and a resumed run keeps its own (see `last.safetensors`); drop --replicas"
            );
        }
        pretrain::resume(dir, a.epochs_set.then_some(a.epochs), opts)?
    } else {
        let method = Method::parse(
            a.method.as_deref().unwrap_or_default(),
            a.version.as_deref(),
        )?;
        let arch: Arch = a
            .arch
            .parse()
            .map_err(|e: String| anyhow::anyhow!("--arch: {e}"))?;
        let model = ResNetConfig {
            arch,
            width: a.width,
            small_stem: !a.imagenet_stem,
            num_classes: None,
        };
        let req = PretrainRequest {
            method,
            data: a.data.clone().unwrap_or_default(),
            model,
            image_size: a.image_size,
            epochs: a.epochs,
            batch_size: a.batch_size,
            lr: a.lr,
            weight_decay: a.weight_decay,
            queue: a.queue,
            tau: a.tau,
            ema_momentum: a.momentum,
            dim: a.dim,
            aug: a.aug.clone(),
            bn_groups: if a.no_shuffle_bn {
                Some(1)
            } else {
                a.bn_groups
            },
            replicas: Some(
                ranks
                    * a.replicas.unwrap_or(if opts.device.is_cpu() && ranks == 1 {
                        trainer::train::replicas::Replicas::default_count()
                    } else {
                        1
                    }),
            ),
            seed: a.seed,
            knn_images: a.knn_images,
            log_every: a.log_every,
        };
        pretrain::pretrain(&req, opts)?
    };
    if !root {
        return Ok(());
    }
    if a.plot {
        let png = opts.out.join("curves.png");
        let metrics = opts.out.join(pretrain::METRICS);
        trainer::train::plot::plot_metrics(&metrics, &png)?;
        eprintln!("curves: {}", png.display());
        if summary.method.is_contrastive() && summary.epochs_done > 0 {
            use study::study::trajectory;
            let per_epoch = summary.images_seen as f64 / summary.epochs_done as f64;
            // A finished run resumed again has no last epoch to take its chance loss from.
            let chance = match summary.chance_loss {
                c if c.is_finite() => Some(c),
                _ => trajectory::last_probe_chance(&metrics)?,
            };
            if let Some(chance) = chance {
                let pts = trajectory::run_points(&metrics, per_epoch, chance)?;
                let png = opts.out.join("trajectory.png");
                let name = opts.out.display().to_string();
                trajectory::trajectory_png(&[(name, pts)], &png)?;
                eprintln!("against the MoCo CIFAR-10 demo: {}", png.display());
            } else {
                eprintln!("no trajectory.png: this invocation ran no epoch and the run has no queue probe to give its chance loss");
            }
        }
    }
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}
