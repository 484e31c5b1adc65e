//! `pretrain --distributed mpi` under `mpirun` (2 ranks on this machine): the same replicas as
//! one process, byte for byte; a rank with other settings and a rank that dies stop the run with
//! a message naming the rank, never a hang; the checkpoint left behind resumes.
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const EXE: &str = env!("CARGO_BIN_EXE_host-trainer");

fn synth(dir: &Path) {
    let o = Command::new(EXE)
        .args(["synth", "objects", "--classes", "10", "--per-class", "10"])
        .args(["--size", "16", "--seed", "3", "--out"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// A tiny MoCo/Exemplar/supervised run: 4 BN groups, so 2 or 4 replicas hold whole groups.
fn args(method: &str, data: &Path, out: &Path, epochs: usize) -> Vec<String> {
    let mut v: Vec<String> = ["pretrain", "--method", method, "--width", "0.125"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for (k, val) in [
        ("--image-size", "16"),
        ("--batch-size", "16"),
        ("--queue", "32"),
        ("--bn-groups", "4"),
        ("--knn-images", "0"),
        ("--epochs", &epochs.to_string()),
    ] {
        v.push(k.into());
        v.push(val.into());
    }
    v.push("--quiet".into());
    v.push("--data".into());
    v.push(data.display().to_string());
    v.push("--out".into());
    v.push(out.display().to_string());
    v
}

/// `mpirun -np <ranks>` (root allowed, as CI runs as root; oversubscribed, as CI has 2 cores).
fn mpirun(ranks: usize) -> Command {
    let mut c = Command::new("mpirun");
    c.args(["--allow-run-as-root", "--oversubscribe", "-np"])
        .arg(ranks.to_string());
    c
}

fn check(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn two_ranks_give_the_weights_of_two_replicas_in_one_process() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    synth(&data);
    // 2 ranks × 1 replica against 2 in one process (MoCo-v2), and 2 ranks × 2 against 4
    // (Exemplar-v2, supervised): the whole checkpoint, every weight, queue entry and momentum
    // buffer, byte for byte.
    for (method, per_rank) in [("moco", 1usize), ("exemplar", 2), ("supervised", 2)] {
        let (one, two) = (
            d.path().join(format!("{method}-one")),
            d.path().join(format!("{method}-mpi")),
        );
        let o = Command::new(EXE)
            .args(args(method, &data, &one, 2))
            .args(["--replicas", &(2 * per_rank).to_string()])
            .output()
            .unwrap();
        check(&o, "one process");
        let o = mpirun(2)
            .arg(EXE)
            .args(args(method, &data, &two, 2))
            .args(["--replicas", &per_rank.to_string(), "--distributed", "mpi"])
            .output()
            .unwrap();
        check(&o, "mpirun");
        for f in ["last.safetensors", "backbone.safetensors"] {
            let (a, b) = (
                std::fs::read(one.join(f)).unwrap(),
                std::fs::read(two.join(f)).unwrap(),
            );
            assert!(
                a == b,
                "{method}: {f} differs between 2 ranks and one process"
            );
        }
    }
}

#[test]
fn a_rank_with_other_settings_is_named() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    synth(&data);
    let out = d.path().join("run");
    let a = args("moco", &data, &out, 1);
    let o = mpirun(1)
        .arg(EXE)
        .args(&a)
        .args(["--distributed", "mpi"])
        .arg(":")
        .args(["-np", "1", EXE])
        .args(&a)
        .args(["--distributed", "mpi", "--lr", "0.5"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("rank 1 was started with other settings") && err.contains("lr=0.5"),
        "{err}"
    );
}

#[test]
fn a_rank_that_dies_stops_the_run_and_the_checkpoint_resumes() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    synth(&data);
    let out = d.path().join("run");
    let mut job = mpirun(2)
        .arg(EXE)
        .args(args("moco", &data, &out, 100_000))
        .args(["--distributed", "mpi"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the first checkpoint, then kill rank 1 (the rank that does not write).
    let start = Instant::now();
    while !out.join("last.safetensors").exists() {
        assert!(start.elapsed() < Duration::from_secs(120), "no checkpoint");
        std::thread::sleep(Duration::from_millis(50));
    }
    let ranks = Command::new("pgrep")
        .args(["-P", &job.id().to_string()])
        .output()
        .unwrap();
    let mut pids: Vec<u32> = String::from_utf8_lossy(&ranks.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    pids.sort();
    assert_eq!(pids.len(), 2, "expected two ranks under mpirun: {pids:?}");
    // Ranks are started in order, so the higher PID is rank 1.
    Command::new("kill")
        .args(["-9", &pids[1].to_string()])
        .status()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = job.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = job.kill();
            panic!("rank 0 did not stop after rank 1 died");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(job.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(err.contains("rank 1"), "the message names the rank: {err}");
    // The last checkpoint is whole: the run continues from it, with the same rank count, for
    // one more epoch (resuming reads and checks every tensor).
    let o = mpirun(2)
        .arg(EXE)
        .args(["pretrain", "--resume"])
        .arg(&out)
        .args(["--stop-after", "1", "--quiet", "--distributed", "mpi"])
        .output()
        .unwrap();
    check(&o, "resume with 2 ranks");
}
