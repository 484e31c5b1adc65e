//! ImageFolder: `root/<class>/<image>`, the general fallback for any labelled image collection.
//!
//! As in torchvision: classes are the sub-folder names **sorted**, images within a class sorted
//! by file name; only `.png`, `.jpg`, `.jpeg` files count (case-insensitive), and a class folder
//! without a single image is an error (it would silently shift every later label otherwise).
use super::{DataError, LabelledImages};
use std::path::Path;

const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

fn sorted_entries(dir: &Path) -> Result<Vec<std::path::PathBuf>, DataError> {
    let rd = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
    let mut v = Vec::new();
    for entry in rd {
        v.push(entry.map_err(|e| DataError::io(dir, e))?.path());
    }
    v.sort();
    Ok(v)
}

/// Read an ImageFolder tree.
pub fn image_folder(root: impl AsRef<Path>) -> Result<LabelledImages, DataError> {
    let root = root.as_ref();
    let mut class_names = Vec::new();
    let mut items = Vec::new();
    for dir in sorted_entries(root)?.into_iter().filter(|p| p.is_dir()) {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with('.') {
            continue;
        }
        let class = class_names.len();
        let before = items.len();
        for f in sorted_entries(&dir)? {
            if f.is_file() && is_image(&f) {
                items.push((f, class));
            }
        }
        if items.len() == before {
            return Err(DataError::invalid(
                &dir,
                "class folder contains no .png/.jpg/.jpeg image",
            ));
        }
        class_names.push(name);
    }
    if class_names.is_empty() {
        return Err(DataError::invalid(
            root,
            "no class sub-folders (expected root/<class>/<image>)",
        ));
    }
    Ok(LabelledImages {
        root: root.to_path_buf(),
        items,
        class_names,
        landmarks: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_classes_and_files_and_image_extensions_only() {
        let d = tempfile::tempdir().unwrap();
        for (c, f) in [
            ("zebra", "b.PNG"),
            ("zebra", "a.jpg"),
            ("ant", "x.jpeg"),
            ("ant", "notes.txt"),
        ] {
            std::fs::create_dir_all(d.path().join(c)).unwrap();
            std::fs::write(d.path().join(c).join(f), b"").unwrap();
        }
        let ds = image_folder(d.path()).unwrap();
        assert_eq!(ds.class_names, vec!["ant", "zebra"]);
        let got: Vec<(String, usize)> = ds
            .items
            .iter()
            .map(|(p, l)| (p.file_name().unwrap().to_string_lossy().into_owned(), *l))
            .collect();
        assert_eq!(
            got,
            vec![
                ("x.jpeg".into(), 0),
                ("a.jpg".into(), 1),
                ("b.PNG".into(), 1)
            ]
        );
    }

    #[test]
    fn empty_class_folder_is_an_error_naming_it() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("cat")).unwrap();
        std::fs::write(d.path().join("cat").join("readme.txt"), b"").unwrap();
        let e = image_folder(d.path()).unwrap_err().to_string();
        assert!(e.contains("cat") && e.contains("no .png"), "{e}");
        let e = image_folder(d.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing"), "{e}");
    }
}
