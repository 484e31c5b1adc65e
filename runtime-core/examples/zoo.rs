//! Writes one of `model::zoo`'s random-weight int8 reference models to a file, for benchmarks
//! and engine comparisons (`scripts/bench_vs_onnxruntime.py`):
//!
//! ```sh
//! cargo run --release -p runtime-core --features std,zoo --example zoo -- resnet8 resnet8.safetensors
//! cargo run --release -p runtime-core --features std,zoo --example zoo -- resnet18 84 64 r18.safetensors
//! ```
//! (`resnet18 PX WIDTH OUT`: input side and stem width; weights seeded with 1, as the criterion
//! benchmark's.)
use runtime_core::{model::zoo, Dtype};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: zoo resnet8 OUT | zoo resnet18 PX WIDTH OUT";
    let num = |s: &str| -> usize {
        s.parse()
            .unwrap_or_else(|_| panic!("{s}: not a number\n{usage}"))
    };
    let (builder, out) = match args.as_slice() {
        [m, out] if m == "resnet8" => (zoo::resnet8(Dtype::Int8, 1), out),
        [m, px, width, out] if m == "resnet18" => {
            (zoo::resnet18(Dtype::Int8, num(px), num(width), 1), out)
        }
        _ => {
            eprintln!("{usage}");
            std::process::exit(2)
        }
    };
    let bytes = builder
        .and_then(|b| b.to_bytes())
        .unwrap_or_else(|e| panic!("building the model: {e:?}"));
    std::fs::write(out, &bytes).unwrap_or_else(|e| panic!("{out}: {e}"));
    println!("{out}: {} bytes", bytes.len());
}
