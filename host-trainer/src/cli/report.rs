//! `host-trainer report DIR`: the main job's side-by-side table of host (candle, f32) and runtime
//! (runtime-core, int8 and f32) figures, read from the JSON results the commands wrote.
//!
//! Layout read (what `scripts/main.sh` writes), one folder per method:
//! `DIR/objects/<method>/{fewshot.json, runtime_fewshot_int8.json, runtime_fewshot_f32.json}` and
//! `DIR/faces/<method>/{landmarks/landmarks.json, runtime_mafl_int8.json, runtime_mafl_f32.json}`.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use serde_json::Value;

/// Print the host-vs-runtime table of a main-job output folder.
#[derive(Args, Debug)]
pub struct ReportArgs {
    /// The folder `scripts/main.sh` wrote (default out/main).
    #[arg(default_value = "out/main")]
    pub dir: PathBuf,
    /// Print the table as JSON.
    #[arg(long)]
    pub json: bool,
}

fn read(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Some(serde_json::from_str(&text).with_context(|| {
        format!("{}: not JSON", path.display())
    })?))
}

/// `accuracy ± ci95` of `shot` in a few-shot result.
fn shot(v: &Option<Value>, shot: u64) -> Option<(f64, f64)> {
    let r = v.as_ref()?.get("results")?.as_array()?;
    let s = r
        .iter()
        .find(|x| x.get("shot").and_then(Value::as_u64) == Some(shot))?;
    Some((s.get("accuracy")?.as_f64()?, s.get("ci95")?.as_f64()?))
}

fn iod(v: &Option<Value>) -> Option<f64> {
    v.as_ref()?.get("iod_error")?.as_f64()
}

fn cell(x: Option<(f64, f64)>) -> String {
    x.map(|(a, c)| format!("{a:.2} ± {c:.2}"))
        .unwrap_or_else(|| "-".into())
}

fn cell1(x: Option<f64>) -> String {
    x.map(|a| format!("{a:.2}")).unwrap_or_else(|| "-".into())
}

fn methods(dir: &Path) -> Vec<String> {
    let mut m: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    m.sort();
    m
}

/// One method's figures: few-shot (accuracy, ci95) for 1 and 5 shots, and MAFL IOD error, each as
/// (host, runtime f32, runtime int8).
struct Row {
    method: String,
    one: [Option<(f64, f64)>; 3],
    five: [Option<(f64, f64)>; 3],
    iod: [Option<f64>; 3],
}

fn row(dir: &Path, m: &str) -> Result<Row> {
    let o = dir.join("objects").join(m);
    let f = dir.join("faces").join(m);
    let fs = [
        read(&o.join("fewshot.json"))?,
        read(&o.join("runtime_fewshot_f32.json"))?,
        read(&o.join("runtime_fewshot_int8.json"))?,
    ];
    let lm = [
        read(&f.join("landmarks").join("landmarks.json"))?,
        read(&f.join("runtime_mafl_f32.json"))?,
        read(&f.join("runtime_mafl_int8.json"))?,
    ];
    Ok(Row {
        method: m.to_string(),
        one: [shot(&fs[0], 1), shot(&fs[1], 1), shot(&fs[2], 1)],
        five: [shot(&fs[0], 5), shot(&fs[1], 5), shot(&fs[2], 5)],
        iod: [iod(&lm[0]), iod(&lm[1]), iod(&lm[2])],
    })
}

pub fn run(a: ReportArgs) -> Result<()> {
    if !a.dir.is_dir() {
        anyhow::bail!(
            "{}: no such folder (run scripts/main.sh first)",
            a.dir.display()
        );
    }
    let mut names = methods(&a.dir.join("objects"));
    for n in methods(&a.dir.join("faces")) {
        if !names.contains(&n) {
            names.push(n);
        }
    }
    let rows = names
        .iter()
        .map(|m| row(&a.dir, m))
        .collect::<Result<Vec<_>>>()?;
    if a.json {
        let side = |x: &[Option<(f64, f64)>; 3]| serde_json::json!({"host": x[0], "runtime_f32": x[1], "runtime_int8": x[2]});
        let v: Vec<Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "method": r.method,
                    "fewshot_1shot": side(&r.one),
                    "fewshot_5shot": side(&r.five),
                    "mafl_iod_error": {"host": r.iod[0], "runtime_f32": r.iod[1], "runtime_int8": r.iod[2]},
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "5-way few-shot accuracy (%, ± 95% interval) on the novel classes, and MAFL IOD error (%)"
    );
    println!("host = candle f32 backbone; runtime = the exported model on runtime-core (f32 graph / int8)\n");
    println!(
        "| method | 1-shot host | 1-shot rt f32 | 1-shot rt int8 | 5-shot host | 5-shot rt f32 | 5-shot rt int8 | IOD host | IOD rt f32 | IOD rt int8 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let c: Vec<String> = r
            .one
            .iter()
            .chain(&r.five)
            .map(|x| cell(*x))
            .chain(r.iod.iter().map(|x| cell1(*x)))
            .collect();
        println!("| {} | {} |", r.method, c.join(" | "));
    }
    Ok(())
}
