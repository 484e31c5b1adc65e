//! The committed `fixtures/tiny` is exactly what `host-trainer fixtures` writes: regenerated into
//! a temporary folder and compared file by file, byte for byte, on a 1-thread and a 3-thread
//! rayon pool (the output must not depend on the thread count).
use std::path::{Path, PathBuf};

use exporter::fixtures::{generate, list_files, MANIFEST};

const REGENERATE: &str = "cargo run -p host-trainer -- fixtures --out fixtures/tiny";

fn committed() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/tiny")
}

/// Every difference between two folders, one line each (empty when identical).
fn differences(want: &Path, got: &Path) -> Vec<String> {
    let a = list_files(want).unwrap_or_default();
    let b = list_files(got).unwrap_or_default();
    let names = |v: &[(PathBuf, u64)]| v.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>();
    let (an, bn) = (names(&a), names(&b));
    let mut out = Vec::new();
    for p in &an {
        if !bn.contains(p) {
            out.push(format!("committed only: {}", p.display()));
        }
    }
    for p in &bn {
        if !an.contains(p) {
            out.push(format!(
                "generated only (missing from the commit): {}",
                p.display()
            ));
        }
    }
    for p in an.iter().filter(|p| bn.contains(p)) {
        let x = std::fs::read(want.join(p)).unwrap_or_default();
        let y = std::fs::read(got.join(p)).unwrap_or_default();
        if x != y {
            let first = x.iter().zip(&y).position(|(u, v)| u != v);
            out.push(format!(
                "differs: {} (committed {} B, generated {} B, first difference at byte {})",
                p.display(),
                x.len(),
                y.len(),
                first.map_or("<end of the shorter>".into(), |i| i.to_string())
            ));
        }
    }
    out
}

#[test]
fn committed_fixtures_are_what_the_generator_writes() {
    let want = committed();
    assert!(
        want.join(MANIFEST).is_file(),
        "{} has no {MANIFEST}; generate it with `{REGENERATE}`",
        want.display()
    );
    for threads in [1, 3] {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("tiny");
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let s = pool
            .install(|| generate(&out))
            .unwrap_or_else(|e| panic!("generating fixtures: {e:#}"));
        let diffs = differences(&want, &out);
        assert!(
            diffs.is_empty(),
            "fixtures/tiny is not what the generator writes ({threads} rayon threads; {} differences):\n  {}\n\
             If the change is intended, regenerate with `{REGENERATE}` and commit the result.",
            diffs.len(),
            diffs.join("\n  ")
        );
        // Small enough to commit.
        assert!(s.total_bytes() < 1 << 20, "{} bytes", s.total_bytes());
    }
}

/// The comparison itself can fail: a one-byte change, a missing file and an extra file are each
/// reported by name.
#[test]
fn differences_name_changed_missing_and_extra_files() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    for d in [a.path(), b.path()] {
        std::fs::create_dir_all(d.join("sub")).unwrap();
        std::fs::write(d.join("sub/same.bin"), b"abc").unwrap();
        std::fs::write(d.join("x.bin"), b"hello").unwrap();
    }
    assert!(differences(a.path(), b.path()).is_empty());
    std::fs::write(b.path().join("x.bin"), b"hellO").unwrap();
    std::fs::write(a.path().join("only_a"), b"").unwrap();
    std::fs::write(b.path().join("sub/only_b"), b"").unwrap();
    let d = differences(a.path(), b.path()).join("\n");
    assert!(d.contains("differs: x.bin") && d.contains("byte 4"), "{d}");
    assert!(d.contains("committed only: only_a"), "{d}");
    assert!(
        d.contains("generated only (missing from the commit): sub/only_b"),
        "{d}"
    );
}

/// A folder that is not a fixture set is never replaced.
#[test]
fn refuses_to_replace_a_folder_that_is_not_a_fixture_set() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("precious.txt"), b"keep me").unwrap();
    let e = format!("{:#}", generate(d.path()).unwrap_err());
    assert!(e.contains("not a fixture set"), "{e}");
    assert_eq!(
        std::fs::read(d.path().join("precious.txt")).unwrap(),
        b"keep me"
    );
}
