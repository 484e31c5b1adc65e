//! `pretrain --distributed nccl` on a build without the `nccl` feature (CI's): a one-line error
//! that says which feature to build with, before any data is read; and an unknown
//! `--distributed` names both kinds. (The NCCL path itself needs GPUs: scripts/gpu_check.sh.)
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_host-trainer");

fn pretrain_error(distributed: &str) -> String {
    let d = tempfile::tempdir().unwrap();
    let o = Command::new(BIN)
        .args([
            "pretrain",
            "--method",
            "moco",
            "--quiet",
            "--distributed",
            distributed,
        ])
        .arg("--data")
        .arg(d.path().join("no-such-data"))
        .arg("--out")
        .arg(d.path().join("run"))
        // As torchrun would start it: the refusal must not depend on the environment.
        .envs([
            ("RANK", "0"),
            ("WORLD_SIZE", "1"),
            ("LOCAL_RANK", "0"),
            ("MASTER_ADDR", "127.0.0.1"),
            ("MASTER_PORT", "29500"),
        ])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.starts_with("error:") && !e.contains("panicked"), "{e}");
    assert!(!d.path().join("run").exists(), "{e}");
    e
}

#[cfg(not(feature = "nccl"))]
#[test]
fn nccl_without_the_feature_names_the_feature() {
    let e = pretrain_error("nccl");
    assert!(
        e.contains("built without NCCL") && e.contains("--features cudnn,nccl"),
        "{e}"
    );
}

#[test]
fn an_unknown_kind_names_both() {
    let e = pretrain_error("gloo");
    assert!(
        e.contains("--distributed gloo: expected `mpi` or `nccl`"),
        "{e}"
    );
}
