//! `host-trainer synth objects|faces`.
use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum SynthCommand {
    /// A mini-ImageNet-like object set (100 classes split 64/16/20).
    Objects,
    /// A CelebA/MAFL-like face set with exact landmarks.
    Faces,
}

pub fn run(_cmd: SynthCommand) -> anyhow::Result<()> {
    anyhow::bail!("synth: not implemented yet")
}
