//! Load (#33 item 6): one model serving many inferences from several threads at once, each
//! thread with its own arena, with `set_threads(2)`. The threads share the process's helpers
//! (`team::engage`): each inference takes a free helper if there is one and splits its convs
//! over it, the others run alone meanwhile. Every output must be the bytes a single-threaded run
//! gives, and the whole load must finish (a deadlock in the hand-over would hang: a watchdog
//! turns it into a failure).
#![cfg(feature = "threads")]

use std::sync::mpsc;
use std::time::Duration;

use runtime_core::heads::rng::SplitMix64;
use runtime_core::Model;

const THREADS: usize = 4;
const INFERENCES: usize = 50;

/// The committed int8 backbone fixture (`host-trainer fixtures`).
fn fixture() -> Vec<u8> {
    let p = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/tiny/backbone-int8.safetensors"
    );
    std::fs::read(p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// Input `i`: random RGB bytes, different for every `i`.
fn image(m: &Model, i: usize) -> Vec<u8> {
    let [h, w, c] = m.input_shape();
    let mut rng = SplitMix64::new(1000 + i as u64);
    (0..h * w * c).map(|_| rng.next_u64() as u8).collect()
}

fn infer(m: &Model, rgb: &[u8], arena: &mut [u8]) -> Vec<i8> {
    m.preprocess_rgb8(rgb, arena).unwrap();
    m.run_i8_in_arena(arena).unwrap().to_vec()
}

#[test]
fn many_threads_share_one_model_and_the_team_without_changing_a_byte() {
    check_under_load(fixture(), INFERENCES);
}

/// The same on the ResNet-18 backbone at 64 px, whose convs are large enough to split over the
/// team (the fixture's may be too small to), with fewer inferences: each is ~50x the work.
#[cfg(feature = "zoo")]
#[test]
fn split_convs_under_load_give_the_single_threaded_bytes() {
    use runtime_core::{model::zoo, Dtype};
    let bytes = zoo::resnet18(Dtype::Int8, 64, 16, 7)
        .unwrap()
        .to_bytes()
        .unwrap();
    check_under_load(bytes, 8);
}

/// `THREADS` threads each run `inferences` inferences of one shared model (`set_threads(2)`),
/// and every output must equal the single-threaded run's.
fn check_under_load(bytes: Vec<u8>, inferences: usize) {
    let single = Model::parse(&bytes).unwrap();
    assert_eq!(single.threads(), 1);
    let mut arena = vec![0u8; single.arena_bytes()];
    let want: Vec<Vec<i8>> = (0..inferences)
        .map(|i| infer(&single, &image(&single, i), &mut arena))
        .collect();
    assert!(
        want.iter().any(|o| o != &want[0]),
        "outputs that do not depend on the input prove little"
    );

    // The threads and the model live for the whole test process ('static): if the team ever
    // deadlocked, the watchdog below fails the test instead of joining threads that never end.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    let mut shared = Model::parse(bytes).unwrap();
    shared.set_threads(2);
    let shared: &'static Model<'static> = Box::leak(Box::new(shared));
    let want: &'static [Vec<i8>] = Box::leak(want.into_boxed_slice());
    let (tx, rx) = mpsc::channel();
    for t in 0..THREADS {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut arena = vec![0u8; shared.arena_bytes()];
            let mut wrong = Vec::new();
            // Each thread walks the inputs from its own offset, so different inputs overlap.
            for k in 0..inferences {
                let i = (k + t * inferences / THREADS) % inferences;
                if infer(shared, &image(shared, i), &mut arena) != want[i] {
                    wrong.push(i);
                }
            }
            let _ = tx.send((t, wrong));
        });
    }
    drop(tx);
    for _ in 0..THREADS {
        let (t, wrong) = rx.recv_timeout(Duration::from_secs(120)).expect(
            "a thread did not finish its inferences in 120 s (deadlock in the team, or a panic)",
        );
        assert!(
            wrong.is_empty(),
            "thread {t}: inputs {wrong:?} gave other bytes than a single-threaded run"
        );
    }
}
