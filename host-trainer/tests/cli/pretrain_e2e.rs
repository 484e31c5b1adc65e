//! End-to-end pretraining on a tiny synthetic object set: every method trains and its loss falls,
//! a run interrupted after one epoch and resumed ends byte-identical to an uninterrupted run, and
//! bad requests fail with clear errors.
use std::path::Path;

use candle_core::Device;
use trainer::data::synth::objects::{generate_objects, ObjectsConfig};
use trainer::method::Method;
use trainer::model::{Arch, ResNetConfig};
use trainer::train::pretrain::{
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
        replicas: None,
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
        distributed: None,
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
        let b = trainer::model::ResNet::open(&out.join(BACKBONE), &Device::Cpu).unwrap();
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

/// The backbone's tensors of a finished run, by name.
fn backbone_tensors(out: &Path) -> std::collections::BTreeMap<String, Vec<f32>> {
    let bytes = std::fs::read(out.join(BACKBONE)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .filter(|(_, v)| v.dtype() == safetensors::Dtype::F32)
        .map(|(n, v)| {
            let f = v
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (n, f)
        })
        .collect()
}

#[test]
fn two_replicas_agree_with_one_within_float_rounding() {
    // The same MoCo-v2 and Exemplar-v2 runs (2 BN groups, so one whole group per replica) on one
    // and on two replicas: the replicas sum the same gradients and average the same batch
    // statistics in another grouping, so only float rounding separates them (one step's
    // gradients agree to 1e-5 relative: `trainer::train::pretrain::trainer::tests`). After 2
    // epochs (6 SGD steps) the epoch losses agree within 1e-5 and every weight within 1e-4 of its
    // tensor's largest value; a batch-norm bias within 1e-4 of its layer's largest γ instead.
    // Why the biases differ: each BN bias shifts a unit-variance activation that the next BN
    // nearly normalises away again, so its gradient is a small remainder of large, cancelling
    // terms, and the float rounding of those terms is a large part of it. With the direct conv
    // kernels (whose sums round in another order than the GEMM's), MoCo-v2's BN biases (largest
    // 2.8e-4 after 6 steps) differ by up to 1.6e-6 between 1 and 2 replicas: 1e-2 of their own
    // size but 1.6e-6 of the activation they shift; every conv weight agrees within 6e-6 of its
    // largest value, Exemplar-v2's biases within 2.2e-6 (measured). Routing any one of the three
    // direct kernels back to the GEMM brings MoCo's biases to 2e-6 too: the spread follows the
    // rounding, not one kernel.
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("objects");
    tiny_objects(&data);
    for method in ["moco-v2", "exemplar-v2"] {
        let mut runs = Vec::new();
        for n in [1usize, 2] {
            let out = d.path().join(format!("{method}-r{n}"));
            let mut r = request(method, &data, 2);
            r.replicas = Some(n);
            // A small learning rate keeps training from amplifying the rounding (at lr 0.03 six
            // steps of this tiny contrastive net turn 1e-5 gradient differences into 2 % weight
            // differences in the BN biases; at 3e-4 they stay below 3e-6, measured).
            r.lr = Some(3e-4);
            pretrain::pretrain(&r, &opts(&out, None)).unwrap();
            runs.push(out);
        }
        let (l1, l2) = (epoch_losses(&runs[0]), epoch_losses(&runs[1]));
        for (a, b) in l1.iter().zip(&l2) {
            assert!(
                (a - b).abs() <= 1e-5 * a.abs().max(1.0),
                "{method}: losses {l1:?} vs {l2:?}"
            );
        }
        let (w1, w2) = (backbone_tensors(&runs[0]), backbone_tensors(&runs[1]));
        assert_eq!(w1.len(), w2.len());
        let largest = |t: &[f32]| t.iter().fold(0f32, |m, x| m.max(x.abs()));
        for (name, a) in &w1 {
            let b = &w2[name];
            let mut scale = largest(a).max(1e-6);
            // A BN bias (the backbone's only biases) against its layer's γ (see above).
            if let Some(gamma) = name
                .strip_suffix(".bias")
                .and_then(|layer| w1.get(&format!("{layer}.weight")))
            {
                scale = scale.max(largest(gamma));
            }
            let worst = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(
                worst <= 1e-4 * scale,
                "{method}: {name} differs by {worst} (largest value {scale}) between 1 and 2 replicas"
            );
        }
    }
}

#[test]
fn a_two_replica_run_is_deterministic_and_resumes_byte_identical() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("objects");
    tiny_objects(&data);
    for method in ["exemplar-v2", "supervised"] {
        let mut r = request(method, &data, 2);
        r.replicas = Some(2);
        let full = d.path().join(format!("{method}-full"));
        pretrain::pretrain(&r, &opts(&full, None)).unwrap();
        let again = d.path().join(format!("{method}-again"));
        pretrain::pretrain(&r, &opts(&again, None)).unwrap();
        let cut = d.path().join(format!("{method}-cut"));
        pretrain::pretrain(&r, &opts(&cut, Some(1))).unwrap();
        pretrain::resume(&cut, None, &opts(&cut, None)).unwrap();
        let a = std::fs::read(full.join(LAST)).unwrap();
        assert!(
            a == std::fs::read(again.join(LAST)).unwrap(),
            "{method}: not deterministic"
        );
        assert!(
            a == std::fs::read(cut.join(LAST)).unwrap(),
            "{method}: resume differs"
        );
    }
}

#[test]
fn replicas_must_hold_whole_bn_groups() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("objects");
    tiny_objects(&data);
    let mut r = request("moco-v2", &data, 1);
    r.replicas = Some(4); // 2 BN groups cannot be split over 4 replicas
    let e = format!(
        "{:#}",
        pretrain::pretrain(&r, &opts(&d.path().join("x"), None)).unwrap_err()
    );
    assert!(
        e.contains("--replicas 4") && e.contains("whole BN groups"),
        "{e}"
    );
    r.replicas = Some(0);
    let e = format!(
        "{:#}",
        pretrain::pretrain(&r, &opts(&d.path().join("y"), None)).unwrap_err()
    );
    assert!(e.contains("--replicas"), "{e}");
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
        distributed: None,
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
