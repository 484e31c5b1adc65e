//! Progress bars for long evaluations, on stderr so `--json` on stdout stays parseable
//! (indicatif hides them by itself when stderr is not a terminal).
use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `len` steps; hidden when `show` is false.
pub fn bar(len: u64, what: &str, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} {bar:40} {pos}/{len} [{elapsed_precise} < {eta_precise}]",
    ) {
        pb.set_style(style);
    }
    pb.set_message(what.to_string());
    pb
}
