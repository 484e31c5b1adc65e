//! Step records (`OUT/steps/<id>.json`, written atomically when a step finishes) and the
//! `study.json` identity check that keeps one folder to one study.

use super::preset::Preset;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

use super::*;

/// What a finished step leaves behind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub id: String,
    pub title: String,
    /// Wall time of the invocation that finished the step.
    pub seconds: f64,
    pub result: Value,
}

/// A data-subset step's record: what was written, and the subset's label in the tables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubsetRecord {
    #[serde(flatten)]
    pub summary: crate::analysis::subset::SubsetSummary,
    #[serde(default)]
    pub label: String,
}

/// The record file of step `id`.
pub fn record_path(out: &Path, id: &str) -> PathBuf {
    out.join(STEPS_DIR).join(format!("{id}.json"))
}

/// The record of step `id`, if it finished. A record that does not parse is an error naming the
/// file (the study itself moves such a record aside and redoes its step: [`read_record_or_redo`]).
pub fn read_record(out: &Path, id: &str) -> Result<Option<StepRecord>> {
    let path = record_path(out, id);
    if !path.is_file() {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let rec: StepRecord = serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: not a step record (a study run moves it aside and redoes the step)",
            path.display()
        )
    })?;
    Ok(Some(rec))
}

/// For the executor's resume scan: the record of step `id`, or `None` when there is none or it
/// is damaged (cut short by a full disk, edited by hand, written by another version): a damaged
/// record is moved aside to `<id>.json.damaged` (kept, never deleted) with a warning naming both
/// files, and the step runs again. A record that cannot be read at all is still an error.
pub fn read_record_or_redo(out: &Path, id: &str) -> Result<Option<StepRecord>> {
    match read_record(out, id) {
        Ok(r) => Ok(r),
        Err(e) if e.downcast_ref::<serde_json::Error>().is_some() => {
            let path = record_path(out, id);
            let aside = path.with_extension("json.damaged");
            std::fs::rename(&path, &aside)
                .with_context(|| format!("moving the damaged record {} aside", path.display()))?;
            eprintln!(
                "warning: {e:#}; moved it to {} and the step runs again",
                aside.display()
            );
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

pub(super) fn write_record(out: &Path, rec: &StepRecord) -> Result<()> {
    let path = record_path(out, &rec.id);
    let dir = out.join(STEPS_DIR);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let text = serde_json::to_string_pretty(rec)? + "\n";
    trainer::fsutil::write_atomic(&path, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// The settings that define a study's results (device and the ablation switches excluded: a restart
/// on another device, or adding an ablation, continues the same study).
pub(super) fn identity(p: &Preset) -> Value {
    let mut q = p.clone();
    q.device = String::new();
    q.ablations.clear();
    serde_json::to_value(&q).unwrap_or(Value::Null)
}

/// Refuse to mix two studies in one folder; record the preset on the first run.
pub(super) fn check_study_file(plan: &Plan, out: &Path) -> Result<()> {
    let path = out.join(STUDY_FILE);
    if path.is_file() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let old: Value =
            serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
        let old_id = old.get("identity").cloned().unwrap_or(Value::Null);
        if old_id != identity(&plan.preset) {
            bail!(
                "{} holds a study with other settings (preset {}); use another --out, or delete the folder to start over",
                out.display(),
                old.pointer("/preset/name").and_then(Value::as_str).unwrap_or("?")
            );
        }
        return Ok(());
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let v = json!({"preset": plan.preset, "identity": identity(&plan.preset)});
    trainer::fsutil::write_atomic(&path, (serde_json::to_string_pretty(&v)? + "\n").as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod damaged_tests {
    use super::*;

    /// A record cut short (as a full disk leaves a hand-copied file) or rewritten by hand is
    /// moved aside and its step redone; the strict reader still refuses it, naming the file.
    #[test]
    fn a_damaged_record_is_kept_aside_and_its_step_redone() {
        let d = tempfile::tempdir().unwrap();
        let rec = StepRecord {
            id: "objects.moco-v2.pretrain".into(),
            title: "t".into(),
            seconds: 1.0,
            result: serde_json::json!({"final_loss": 1.0}),
        };
        write_record(d.path(), &rec).unwrap();
        assert_eq!(
            read_record_or_redo(d.path(), &rec.id).unwrap(),
            Some(rec.clone())
        );
        let path = record_path(d.path(), &rec.id);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, &text[..text.len() / 2]).unwrap();
        let e = read_record(d.path(), &rec.id).unwrap_err();
        assert!(format!("{e:#}").contains(&rec.id), "{e:#}");
        assert_eq!(read_record_or_redo(d.path(), &rec.id).unwrap(), None);
        assert!(!path.exists());
        let aside = path.with_extension("json.damaged");
        assert_eq!(
            std::fs::read_to_string(aside).unwrap(),
            text[..text.len() / 2]
        );
    }
}
