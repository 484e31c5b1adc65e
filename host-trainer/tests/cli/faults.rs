//! Faults (#33), the binary as a user runs it: a disk that fills up (`ulimit -f`), a run that
//! diverges, a damaged or foreign checkpoint, two processes on one folder. Each ends in a
//! one-line `error:` naming the file (or tensor, or process), never a panic or a silent death,
//! and the last good checkpoint always survives.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::Device;
use trainer::data::synth::objects::{generate_objects, ObjectsConfig};
use trainer::train::checkpoint;
use trainer::train::pretrain::{PretrainConfig, BACKBONE, LAST};

const BIN: &str = env!("CARGO_BIN_EXE_host-trainer");

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

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `pretrain` of a tiny supervised ResNet-18 x0.125 on 16 px images (3 steps an epoch), one
/// replica so that runs are deterministic on any machine, plus `extra`.
fn pretrain_args<'a>(data: &'a Path, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "pretrain",
        "--method",
        "supervised",
        "--data",
        s(data),
        "--out",
        s(out),
        "--width",
        "0.125",
        "--image-size",
        "16",
        "--batch-size",
        "20",
        "--knn-images",
        "0",
        "--replicas",
        "1",
        "--quiet",
    ];
    a.extend_from_slice(extra);
    a
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The command must fail with exit 1 and a one-line `error:` (no panic); returns the message.
fn fails(o: &Output, what: &str) -> String {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(1), "{what}: {e}");
    assert!(
        e.starts_with("error:") && !e.contains("panicked"),
        "{what}: {e}"
    );
    e
}

fn ok(o: &Output, what: &str) {
    assert!(o.status.success(), "{what}: {}", stderr(o));
}

/// Files in `dir` other than the ones a run keeps (temporary files left behind by a failed write).
fn leftovers(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().contains(".tmp"))
        .collect()
}

/// Item 1: a resumed run whose checkpoint write passes the file size limit (`ulimit -f 64`:
/// 32 KiB, the checkpoint is 1.4 MB) ends with an error naming the file and the cause instead of
/// dying of SIGXFSZ with nothing said; the previous checkpoint stays whole, nothing is left
/// behind, and `--resume` with space back ends byte-identical to a run never interrupted.
#[cfg(unix)]
#[test]
fn a_checkpoint_write_past_the_file_size_limit_fails_naming_the_file() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("objects");
    tiny_objects(&data);
    let out = d.path().join("run");
    ok(
        &run(&pretrain_args(
            &data,
            &out,
            &["--epochs", "2", "--stop-after", "1"],
        )),
        "first epoch",
    );
    let before = std::fs::read(out.join(LAST)).unwrap();
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let o = Command::new("sh")
        .args(["-c", r#"ulimit -f 64; exec "$0" "$@""#, BIN])
        .args(["pretrain", "--resume", s(&out), "--quiet"])
        .output()
        .unwrap();
    let e = fails(&o, "resume under ulimit -f 64");
    assert!(
        e.contains(&out.join(LAST).display().to_string()) && e.contains("File too large"),
        "the error must name the checkpoint and the cause: {e}"
    );
    assert!(
        std::fs::read(out.join(LAST)).unwrap() == before,
        "the previous checkpoint was damaged"
    );
    assert!(leftovers(&out).is_empty(), "{:?}", leftovers(&out));
    // Every metrics line stays whole (the epoch's step lines fitted; nothing is torn).
    let now = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert!(now.starts_with(&metrics) && now.ends_with('\n'));
    for l in now.lines() {
        serde_json::from_str::<serde_json::Value>(l).unwrap();
    }
    // Space is back: the run continues and ends where an uninterrupted run ends.
    ok(
        &run(&["pretrain", "--resume", s(&out), "--quiet"]),
        "resume",
    );
    let full = d.path().join("full");
    ok(
        &run(&pretrain_args(&data, &full, &["--epochs", "2"])),
        "uninterrupted",
    );
    assert!(
        std::fs::read(out.join(BACKBONE)).unwrap() == std::fs::read(full.join(BACKBONE)).unwrap()
    );
}

/// Item 2: at lr 20 this run diverges in its second epoch (its loss passes 1000 x chance, then
/// overflows; before the check it ended with exit 0 and a backbone full of NaN). The run stops
/// at that step, naming the epoch and step, writes no backbone, and the checkpoint of the last
/// good epoch stays readable, finite and unchanged. At lr 1000 it diverges in epoch 0 and writes
/// no checkpoint at all.
#[test]
fn a_diverging_run_stops_at_the_step_and_keeps_the_last_good_checkpoint() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("objects");
    tiny_objects(&data);
    for lr in ["20", "1000"] {
        let out = d.path().join(format!("lr{lr}"));
        let o = run(&pretrain_args(&data, &out, &["--epochs", "4", "--lr", lr]));
        let e = fails(&o, &format!("--lr {lr}"));
        assert!(
            e.contains("training diverged at epoch ") && e.contains(", step "),
            "{e}"
        );
        assert!(
            !out.join(BACKBONE).exists(),
            "a diverged run wrote a backbone"
        );
        let epoch: usize = e
            .split("diverged at epoch ")
            .nth(1)
            .and_then(|r| r.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no epoch in {e}"));
        if epoch == 0 {
            assert!(!out.join(LAST).exists(), "{e}");
            continue;
        }
        // The checkpoint is the end of the epoch before the one that diverged, and it is finite.
        let (tensors, meta) =
            checkpoint::read::<PretrainConfig>(&out.join(LAST), &Device::Cpu).unwrap();
        assert_eq!(meta.next_epoch, epoch, "{e}");
        let named: Vec<_> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        assert_eq!(
            trainer::train::finite::first_non_finite(named).unwrap(),
            None
        );
    }
}

/// Item 2, export: a backbone with non-finite weights (as a diverged run used to write) is
/// refused, naming the tensor.
#[test]
fn export_refuses_non_finite_weights_naming_the_tensor() {
    use trainer::model::{Arch, ResNet, ResNetConfig};
    let d = tempfile::tempdir().unwrap();
    let cfg = ResNetConfig {
        arch: Arch::Resnet18,
        width: 0.0625,
        small_stem: true,
        num_classes: None,
    };
    let net = ResNet::new(&cfg, 0, &Device::Cpu).unwrap();
    let w = net.var("layer2.0.conv1.weight").unwrap();
    let t = w.as_tensor();
    let bad = (t.ones_like().unwrap() * f64::from(f32::INFINITY)).unwrap();
    w.set(&bad).unwrap();
    let bb = d.path().join("diverged.safetensors");
    net.save_safetensors(&bb).unwrap();
    let out = d.path().join("m.safetensors");
    let o = run(&["export", "--model", s(&bb), "--f32", "--out", s(&out)]);
    let e = fails(&o, "export");
    assert!(
        e.contains("diverged.safetensors") && e.contains("layer2.0.conv1.weight"),
        "{e}"
    );
    assert!(!out.exists());
}

/// Item 3: `--resume` from a truncated, bit-flipped or foreign `last.safetensors` is a one-line
/// error naming the file, never a panic and never a silent resume from corrupt weights.
#[test]
fn resume_from_a_damaged_or_foreign_checkpoint_is_a_clear_error() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("objects");
    tiny_objects(&data);
    let good_run = d.path().join("good");
    ok(
        &run(&pretrain_args(
            &data,
            &good_run,
            &["--epochs", "2", "--stop-after", "1"],
        )),
        "first epoch",
    );
    let good = std::fs::read(good_run.join(LAST)).unwrap();
    let header = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    for cut in [0, 5, 8, 100, 8 + header, 8 + header + 1000, good.len() - 1] {
        cases.push((format!("truncated at {cut}"), good[..cut].to_vec()));
    }
    // Bit flips in the length, the header and (most of the file) the tensor data.
    for at in [
        3,
        9,
        20,
        header / 2,
        8 + header + 4,
        good.len() / 2,
        good.len() - 3,
    ] {
        let mut b = good.clone();
        b[at] ^= 0x10;
        cases.push((format!("bit flipped at {at}"), b));
    }
    // Foreign files: a backbone (not a training checkpoint), an int8 runtime model, and a
    // checkpoint whose tensors belong to another run (another model) than its metadata says.
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/tiny");
    for f in ["backbone-f32.safetensors", "backbone-int8.safetensors"] {
        cases.push((
            format!("fixture {f}"),
            std::fs::read(fixtures.join(f)).unwrap(),
        ));
    }
    let other_run = d.path().join("other");
    let mut other = pretrain_args(&data, &other_run, &["--epochs", "2", "--stop-after", "1"]);
    other[8] = "0.25"; // --width
    ok(&run(&other), "other run");
    cases.push((
        "another run's tensors".into(),
        splice(&good, &other_run.join(LAST)),
    ));
    for (what, bytes) in cases {
        let dir = d.path().join("case");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(LAST), &bytes).unwrap();
        let o = run(&["pretrain", "--resume", s(&dir), "--quiet"]);
        let e = fails(&o, &what);
        assert!(
            e.contains(LAST),
            "{what}: the error must name the file: {e}"
        );
        assert!(!dir.join(BACKBONE).exists(), "{what}");
    }
}

/// A checkpoint with `meta_from`'s metadata (its checksum dropped, as in a checkpoint written
/// before checksums) and the tensors of the checkpoint at `tensors_from`.
fn splice(meta_from: &[u8], tensors_from: &Path) -> Vec<u8> {
    let st_meta = safetensors::SafeTensors::read_metadata(meta_from)
        .unwrap()
        .1;
    let json = &st_meta.metadata().as_ref().unwrap()[checkpoint::META_KEY];
    let mut meta: serde_json::Value = serde_json::from_str(json).unwrap();
    meta.as_object_mut().unwrap().remove("checksum");
    let other = std::fs::read(tensors_from).unwrap();
    let st = safetensors::SafeTensors::deserialize(&other).unwrap();
    let tensors: Vec<(String, safetensors::tensor::TensorView)> = st.tensors();
    safetensors::serialize(
        tensors,
        Some(std::collections::HashMap::from([(
            checkpoint::META_KEY.to_string(),
            meta.to_string(),
        )])),
    )
    .unwrap()
}

/// Item 4: while a pretraining runs in a folder, a second `pretrain` there (new or `--resume`)
/// is refused naming the first one's PID; once that process is killed (`kill -9`: no clean-up
/// runs), its lock does not stay stuck and the run resumes.
#[cfg(unix)]
#[test]
fn a_second_writer_is_refused_and_a_dead_writers_lock_is_not_stuck() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("objects");
    tiny_objects(&data);
    let out = d.path().join("run");
    ok(
        &run(&pretrain_args(
            &data,
            &out,
            &["--epochs", "2", "--stop-after", "1"],
        )),
        "first epoch",
    );
    // The first writer: a resume long enough to still run while the others try.
    let mut first = KillOnDrop(
        Command::new(BIN)
            .args([
                "pretrain",
                "--resume",
                s(&out),
                "--epochs",
                "100000",
                "--quiet",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = first.0.id().to_string();
    let lock = out.join(trainer::fsutil::LOCK_FILE);
    let started = std::time::Instant::now();
    while !std::fs::read_to_string(&lock).is_ok_and(|t| t.starts_with(&format!("{pid} "))) {
        assert!(
            started.elapsed().as_secs() < 60,
            "the first writer never took the lock"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let second_new = pretrain_args(&data, &out, &["--epochs", "2"]);
    let second_resume = ["pretrain", "--resume", s(&out), "--quiet"];
    for args in [&second_new[..], &second_resume[..]] {
        let e = fails(&run(args), "second writer");
        assert!(
            e.contains("in use by another process") && e.contains(&format!("PID {pid} ")),
            "{e}"
        );
    }
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    assert!(lock.exists(), "the dead writer's lock file stays behind");
    ok(
        &run(&[
            "pretrain",
            "--resume",
            s(&out),
            "--quiet",
            "--stop-after",
            "1",
        ]),
        "resume after the first writer died",
    );
}

/// A child process killed (by its PID, SIGKILL) when the test ends, failed or not, so that a
/// failing assertion never leaves a 100 000-epoch run behind.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Item 4, `study`: a study folder in use (here: locked by this test process) is refused at
/// once, naming the holder's PID, before any step runs.
#[test]
fn a_study_on_a_folder_in_use_is_refused_naming_the_holder() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("study");
    let held = trainer::fsutil::DirLock::acquire(&out, "test holder").unwrap();
    let e = fails(&run(&["study", "--out", s(&out), "--quiet"]), "study");
    let holder = format!("PID {} (test holder)", std::process::id());
    assert!(
        e.contains("in use by another process") && e.contains(&holder),
        "{e}"
    );
    assert!(!out.join("steps").exists(), "a step ran: {e}");
    drop(held);
}
