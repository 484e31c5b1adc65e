//! End-to-end pretraining on a tiny synthetic object set: every method trains and its loss falls,
//! a run interrupted after one epoch and resumed ends byte-identical to an uninterrupted run, and
//! bad requests fail with clear errors.
use std::path::Path;

use candle_core::Device;
use host_trainer::data::synth::objects::{generate_objects, ObjectsConfig};
use host_trainer::method::Method;
use host_trainer::model::{Arch, ResNetConfig};
use host_trainer::train::pretrain::{
    self, MetricsLine, PretrainRequest, RunOptions, BACKBONE, LAST, METRICS,
};

fn tiny_objects(dir: &Path) {
    let cfg = ObjectsConfig {
        classes: 10,
        per_class: 10,
        size: 16,
        seed: 3,
        alignment: 1.0,
    };
    generate_objects(&cfg, dir).expect("synthetic objects");
}

fn request(method: &str, data: &Path, epochs: usize) -> PretrainRequest {
    PretrainRequest {
        method: method.parse::<Method>().unwrap(),
        data: data.to_owned(),
        model: ResNetConfig {
            arch: Arch::Resnet18,
            width: 0.125,
            small_stem: true,
            num_classes: None,
        },
        image_size: 16,
        epochs,
        batch_size: 20,
        lr: Some(0.03),
        weight_decay: None,
        queue: Some(40),
        tau: None,
        ema_momentum: Some(0.99),
        dim: Some(16),
        // Weak augmentation: at 16 px and 60 images, instance discrimination under the full
        // MoCo pipeline barely moves in a few dozen steps; with flips alone it learns visibly.
        aug: Some("hflip".into()),
        bn_groups: Some(2),
        seed: 7,
        knn_images: 6,
        log_every: 1,
    }
}

fn opts(out: &Path, stop_after: Option<usize>) -> RunOptions {
    RunOptions {
        out: out.to_owned(),
        device: Device::Cpu,
        stop_after,
        progress: false,
        probe_queue_every: 0,
    }
}

/// The `epoch` lines of a run's metrics.jsonl.
fn epoch_lines(out: &Path) -> Vec<MetricsLine> {
    std::fs::read_to_string(out.join(METRICS))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<MetricsLine>(l).unwrap())
        .filter(|m| m.kind == "epoch")
        .collect()
}

fn epoch_losses(out: &Path) -> Vec<f64> {
    epoch_lines(out).iter().map(|m| m.loss).collect()
}

#[test]
fn every_method_trains_and_its_loss_falls() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("objects");
    tiny_objects(&data);
    for method in [
        "supervised",
        "moco-v1",
        "moco-v2",
        "exemplar-v1",
        "exemplar-v2",
    ] {
        let out = d.path().join(method);
        let s = pretrain::pretrain(&request(method, &data, 16), &opts(&out, None)).unwrap();
        assert_eq!(s.epochs_done, 16);
        assert!(out.join(BACKBONE).is_file() && out.join(LAST).is_file());
        let losses = epoch_losses(&out);
        assert_eq!(losses.len(), 16, "{method}: one epoch line per epoch");
        assert!(losses.iter().all(|l| l.is_finite()));
        // Contrastive runs start with a queue of random unit vectors, which are easy negatives:
        // epoch 0's loss is artificially low and the loss rises once real keys fill the queue
        // (after K/B = 2 steps). The reference is therefore the mean of epochs 1-4, the first
        // epochs whose negatives are real keys; the last three epochs must be lower on average.
        let reference = if method == "supervised" {
            losses[0]
        } else {
            losses[1..5].iter().sum::<f64>() / 4.0
        };
        let tail = losses[losses.len() - 3..].iter().sum::<f64>() / 3.0;
        assert!(tail < reference, "{method}: loss did not fall: {losses:?}");
        // The backbone opens as a plain feature extractor (no fc, no projection head).
        let b = host_trainer::model::ResNet::open(&out.join(BACKBONE), &Device::Cpu).unwrap();
        assert_eq!(b.config().num_classes, None);
    }
}

#[test]
fn a_resumed_run_ends_byte_identical_to_an_uninterrupted_one() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("objects");
    tiny_objects(&data);
    for method in ["moco-v2", "supervised"] {
        let full = d.path().join(format!("{method}-full"));
        let s_full = pretrain::pretrain(&request(method, &data, 2), &opts(&full, None)).unwrap();
        let cut = d.path().join(format!("{method}-cut"));
        let s = pretrain::pretrain(&request(method, &data, 2), &opts(&cut, Some(1))).unwrap();
        assert_eq!(s.epochs_done, 1);
        assert!(s.backbone.is_none() && !cut.join(BACKBONE).exists());
        let s_resumed = pretrain::resume(&cut, None, &opts(&cut, None)).unwrap();
        // The initial network's kNN is a property of the seed, whatever the run's history.
        let init = s_full.knn_init_top1.expect("kNN at init measured");
        assert!((0.0..=100.0).contains(&init));
        assert_eq!(s.knn_init_top1, Some(init), "{method}");
        assert_eq!(s_resumed.knn_init_top1, Some(init), "{method}");
        assert_eq!(s_full.knn_queries, 6);
        let a = std::fs::read(full.join(BACKBONE)).unwrap();
        let b = std::fs::read(cut.join(BACKBONE)).unwrap();
        assert!(
            a == b,
            "{method}: resumed backbone differs from the uninterrupted one"
        );
        assert!(std::fs::read(full.join(LAST)).unwrap() == std::fs::read(cut.join(LAST)).unwrap());
    }
}

#[test]
fn bad_requests_fail_clearly() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("objects");
    tiny_objects(&data);
    let out = d.path().join("x");
    let mut r = request("moco-v2", &data, 1);
    r.queue = Some(30);
    let e = pretrain::pretrain(&r, &opts(&out, None))
        .unwrap_err()
        .to_string();
    assert!(e.contains("--queue 30") && e.contains("multiple"), "{e}");
    let r = request("moco-v2", &d.path().join("missing"), 1);
    let e = format!(
        "{:#}",
        pretrain::pretrain(&r, &opts(&out, None)).unwrap_err()
    );
    assert!(e.contains("missing"), "{e}");
    assert!("simclr".parse::<Method>().is_err());
    let e = format!(
        "{:#}",
        pretrain::resume(&d.path().join("nothing"), None, &opts(&out, None)).unwrap_err()
    );
    assert!(e.contains("nothing to resume"), "{e}");
}

/// The binary itself: bad command lines exit 1 with a one-line `error:` (no panic, no backtrace).
#[test]
fn the_cli_rejects_bad_pretraining_requests() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("o");
    let out = out.to_str().unwrap();
    let cases: [(&[&str], &str); 4] = [
        (
            &[
                "pretrain", "--method", "simclr", "--data", ".", "--out", out,
            ],
            "unknown method",
        ),
        (
            &[
                "pretrain",
                "--method",
                "moco",
                "--version",
                "v9",
                "--data",
                ".",
                "--out",
                out,
            ],
            "unknown version",
        ),
        (
            &[
                "pretrain",
                "--method",
                "moco",
                "--data",
                "/no/such/dir",
                "--out",
                out,
            ],
            "/no/such/dir",
        ),
        (&["pretrain", "--resume", out], "nothing to resume"),
    ];
    for (args, want) in cases {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_host-trainer"))
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.starts_with("error:") && err.contains(want),
            "{args:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

fn epoch_probes(out: &Path) -> Vec<Option<pretrain::QueueProbe>> {
    epoch_lines(out).iter().map(|m| m.queue_probe).collect()
}

#[test]
fn the_queue_probe_rebuilds_the_queue_exactly_and_changes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("objects");
    tiny_objects(&data);
    let probing = |out: &Path, every| RunOptions {
        probe_queue_every: every,
        ..opts(out, None)
    };
    // 54 training images in batches of 20: 2 steps per epoch, so the queue (K = 20, one batch)
    // holds the last batch and the first is the probe.
    // A key encoder that never moves (m = 1): the re-encoded queue is the training queue, bit
    // for bit, so both losses and accuracies agree exactly — for MoCo and for Exemplar's mask.
    for method in ["moco-v2", "exemplar-v2"] {
        let out = d.path().join(format!("{method}-frozen"));
        let req = PretrainRequest {
            ema_momentum: Some(1.0),
            queue: Some(20),
            ..request(method, &data, 3)
        };
        let s = pretrain::pretrain(&req, &probing(&out, 1)).unwrap();
        let probes = epoch_probes(&out);
        assert_eq!(probes.len(), 3);
        for p in &probes {
            let p = p.expect("a probe every epoch");
            assert!(
                p.loss_stale.is_finite() && p.chance > 0.0,
                "{method}: {p:?}"
            );
            assert_eq!(p.loss_fresh, p.loss_stale, "{method}: {p:?}");
            assert_eq!(p.top1_fresh, p.top1_stale, "{method}: {p:?}");
        }
        assert_eq!(s.queue_probe, probes[2], "{method}: summary = last probe");
    }
    // A key encoder that moves fast, batches of 10 (5 steps, the queue holds the last 2): the
    // older of the queue's batches was encoded one EMA step before the positive, and the probe
    // sees it. And the probe changes nothing: the run with it ends byte-identical
    // to the run without it.
    let fast = PretrainRequest {
        lr: Some(0.3),
        ema_momentum: Some(0.9),
        batch_size: 10,
        queue: Some(20),
        ..request("moco-v2", &data, 4)
    };
    let with = d.path().join("probed");
    let without = d.path().join("plain");
    pretrain::pretrain(&fast, &probing(&with, 2)).unwrap();
    pretrain::pretrain(&fast, &opts(&without, None)).unwrap();
    let probes = epoch_probes(&with);
    assert!(
        probes[0].is_none() && probes[2].is_none(),
        "every 2nd epoch"
    );
    let moved: Vec<_> = [probes[1], probes[3]].into_iter().flatten().collect();
    assert_eq!(moved.len(), 2);
    assert!(
        moved.iter().all(|p| p.loss_fresh != p.loss_stale),
        "{moved:?}"
    );
    for f in [LAST, BACKBONE] {
        assert!(
            std::fs::read(with.join(f)).unwrap() == std::fs::read(without.join(f)).unwrap(),
            "{f}: the probe changed the run"
        );
    }
    // Supervised runs have no queue.
    let sup = d.path().join("supervised");
    let s = pretrain::pretrain(&request("supervised", &data, 1), &probing(&sup, 1)).unwrap();
    assert!(s.queue_probe.is_none());
}
