//! `host-trainer synth`: writes the sets and their previews, and rejects bad arguments.
#[test]
fn cli_writes_sets_and_previews_and_rejects_bad_arguments() {
    let exe = env!("CARGO_BIN_EXE_host-trainer");
    let d = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(exe)
        .args([
            "synth",
            "objects",
            "--classes",
            "5",
            "--per-class",
            "2",
            "--size",
            "12",
            "--out",
        ])
        .arg(d.path().join("obj"))
        .arg("--preview")
        .arg(d.path().join("obj.png"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("objects:"));
    let sheet = image::open(d.path().join("obj.png")).unwrap();
    assert!(sheet.width() > 12 && sheet.height() > 12);

    let out = std::process::Command::new(exe)
        .args([
            "synth",
            "faces",
            "--identities",
            "5",
            "--per-identity",
            "4",
            "--size",
            "16",
            "--out",
        ])
        .arg(d.path().join("faces"))
        .arg("--preview")
        .arg(d.path().join("faces.png"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(d.path().join("faces/MAFL/testing.txt").is_file());
    assert!(d.path().join("faces.png").is_file());

    let out = std::process::Command::new(exe)
        .args(["synth", "objects", "--classes", "2", "--out"])
        .arg(d.path().join("bad"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error:") && err.contains("--classes 2"),
        "{err}"
    );
}
