//! `host-trainer fixtures`: regenerate the committed test fixtures; the work is
//! `exporter::fixtures::generate`.
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;

/// Regenerate the tiny end-to-end fixtures (datasets, exported int8/f32 backbone and landmark
/// models, host results) byte for byte.
#[derive(Args, Debug)]
pub struct FixturesArgs {
    /// Output folder (`fixtures/tiny` in the repository); replaced only if it is a fixture set
    /// (has fixtures.json) or empty.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: FixturesArgs) -> anyhow::Result<()> {
    let t = Instant::now();
    let s = exporter::fixtures::generate(&a.out)
        .with_context(|| format!("generating fixtures into {}", a.out.display()))?;
    for (p, n) in &s.files {
        println!("{n:>8}  {}", p.display());
    }
    println!(
        "fixtures: {} files, {} bytes in {}; host MAFL IOD error {:.4}%; {:.1} s",
        s.files.len(),
        s.total_bytes(),
        a.out.display(),
        s.host_iod_error,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
