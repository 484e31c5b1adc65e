//! Hostile bytes through the C API (issue #33 item 5, host half): every committed fixture model
//! (`fixtures/tiny/*.safetensors`, `fixtures/mcu/*.safetensors`; `runtime-ffi/fixtures` holds
//! images only) cut at every structural boundary and mutated a few hundred times in the
//! fuzzers' style (`runtime-mcu/src/hostile.rs` says how), then loaded, described and run as C
//! firmware would, with an arena of exactly `arena_bytes`. Every call must return a status code
//! the header documents for it, never `RT_STATUS_INTERNAL`, never a panic (inside an
//! `extern "C"` function a panic aborts the test binary; the panic hook first names the case).
//! The test profile keeps overflow checks and debug assertions on, so arithmetic overflow in
//! the loader counts as a panic too.
//!
//! The same case generator and runner are compiled into runtime-mcu's hostile mode, which runs
//! them on the Cortex-M4F under QEMU (`tests/tests/mcu_hostile.rs`).

extern crate alloc;

#[path = "../../runtime-mcu/src/hostile.rs"]
// Shared with the firmware and the other test: each user calls only part of it.
#[allow(dead_code)]
mod hostile;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use hostile::{Kind, Mutator, Outcome};
use runtime_ffi::RtStatus;

/// Random cases per fixture, after its boundary truncations.
const RANDOM_CASES: usize = 1000;

/// The case being run, for the panic hook (a panic in the C API aborts before unwinding).
static CURRENT: Mutex<String> = Mutex::new(String::new());

fn fixtures() -> Vec<(String, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut v = Vec::new();
    for dir in ["fixtures/tiny", "fixtures/mcu"] {
        let mut names: Vec<_> = std::fs::read_dir(root.join(dir))
            .unwrap_or_else(|e| panic!("{dir}: {e}"))
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".safetensors"))
            .collect();
        names.sort();
        for n in names {
            let rel = format!("{dir}/{n}");
            let bytes = std::fs::read(root.join(&rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
            v.push((rel, bytes));
        }
    }
    v
}

#[derive(Default)]
struct Tally {
    cases: usize,
    loaded: usize,
    ran: usize,
    statuses: BTreeMap<String, usize>,
}

#[test]
fn mutated_models_return_documented_codes() {
    let t0 = std::time::Instant::now();
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if let Ok(c) = CURRENT.lock() {
            eprintln!("PANIC in hostile case {c}");
        }
        hook(info)
    }));

    let fx = fixtures();
    assert_eq!(fx.len(), 7, "expected the 4 tiny and 3 mcu fixture models");
    let image: Vec<u8> = (0..1 << 16).map(|i| (i * 37 % 251) as u8).collect();
    let input: Vec<i8> = image.iter().map(|&b| b as i8).collect();
    let mut out = vec![0f32; 4096];
    let mut by_kind: BTreeMap<String, Tally> = BTreeMap::new();
    let mut undocumented: Vec<String> = Vec::new();
    let mut buf = Vec::new();

    for (seed, (name, base)) in fx.iter().enumerate() {
        // The unmutated model loads and runs: otherwise every case would be a refusal.
        let mut arena = vec![0u8; 1 << 20];
        let good = hostile::run_case(base, &mut arena, &image, &input, &mut out);
        assert!(good.ran() && good.documented(), "{name}: {good:?}");

        let m = Mutator::new(base, seed as u64 + 1);
        buf.resize(base.len() + hostile::MAX_GROWTH, 0);
        for k in 0..m.boundaries() + RANDOM_CASES {
            let (kind, len) = m
                .case(k, &mut buf)
                .unwrap_or_else(|| panic!("{name} case {k}: does not fit the case buffer"));
            *CURRENT.lock().unwrap() = format!("{name} #{k} ({kind:?}, {len} bytes)");
            let bytes = &buf[..len];
            // Exactly the arena the model asks for (capped: a model asking for more than 64 MiB
            // gets 64 MiB, and must be refused with ARENA_TOO_SMALL).
            let o = sized_run(bytes, &image, &input, &mut out);
            let t = by_kind.entry(format!("{kind:?}")).or_default();
            t.cases += 1;
            t.loaded += (o.load == Some(RtStatus::Ok)) as usize;
            t.ran += o.ran() as usize;
            *t.statuses.entry(summary(&o)).or_default() += 1;
            if !o.documented() {
                undocumented.push(format!("{name} #{k} ({kind:?}): {o:?}"));
            }
        }
    }

    let total: usize = by_kind.values().map(|t| t.cases).sum();
    let ran: usize = by_kind.values().map(|t| t.ran).sum();
    let loaded: usize = by_kind.values().map(|t| t.loaded).sum();
    eprintln!(
        "hostile: {total} cases, {} refused at load, {loaded} loaded, {ran} ran, {:.1} s",
        total - loaded,
        t0.elapsed().as_secs_f64()
    );
    for (kind, t) in &by_kind {
        eprintln!(
            "  {kind:<16} {:>5} cases {:>5} loaded {:>5} ran  {:?}",
            t.cases, t.loaded, t.ran, t.statuses
        );
    }
    assert!(
        undocumented.is_empty(),
        "{} cases returned an undocumented status:\n{}",
        undocumented.len(),
        undocumented.join("\n")
    );
    assert!(total >= 2000, "only {total} cases");
    // The mix must exercise both sides: refusals of each kind of damage and models that run.
    let refused = |k: Kind| {
        let t = &by_kind[&format!("{k:?}")];
        t.cases - t.loaded
    };
    for k in [
        Kind::TruncateBoundary,
        Kind::HeaderLen,
        Kind::NumberEdit,
        Kind::LineDelete,
        Kind::LineDuplicate,
    ] {
        assert!(refused(k) > 0, "no {k:?} case was refused");
    }
    assert!(ran > 0 && ran < total, "{ran} of {total} ran");
    let _ = std::panic::take_hook();
}

/// [`hostile::run_case`] with buffers of exactly the model's sizes (up to generous caps).
fn sized_run(bytes: &[u8], image: &[u8], input: &[i8], out: &mut [f32]) -> Outcome {
    // Load once to learn the sizes (a refused model costs nothing more), then the real run.
    let probe = hostile::run_case(bytes, &mut [], image, input, out);
    if probe.load != Some(RtStatus::Ok) {
        return probe;
    }
    let mut arena = vec![0u8; probe.arena_bytes.min(64 << 20)];
    hostile::run_case(bytes, &mut arena, image, input, out)
}

/// One case's statuses as a short key: `load/run_u8/run_i8/landmarks`.
fn summary(o: &Outcome) -> String {
    let s = |x: Option<RtStatus>| x.map_or("-".to_string(), |s| format!("{s:?}"));
    format!(
        "{}/{}/{}/{}",
        s(o.load),
        s(o.run_u8),
        s(o.run_i8),
        s(o.landmarks)
    )
}
