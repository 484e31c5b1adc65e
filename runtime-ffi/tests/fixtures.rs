//! The C example's inputs, made from the committed `fixtures/tiny` set. C has no PNG decoder
//! here, so the images are stored as raw RGB8 (HWC, 16×16×3 = 768 bytes, the tiny models' input
//! size) in `runtime-ffi/fixtures/`:
//!
//! * `face.rgb` and `face.png`: the MAFL crop (`data::mafl_crop_window`, rows 3..19 of the
//!   16×20 aligned image) of the first MAFL test face, `fixtures/tiny/faces`. The crop is already
//!   16×16, so no resampling is involved, and the PNG lets `runtime-cli infer --exact-size` see
//!   the very same pixels.
//! * `objects/<name>.rgb`: the 16×16 object images of `fixtures/tiny/objects/images/<name>.png`
//!   (the CLI reads those PNGs directly), and `episode.txt`, one few-shot episode over them: the
//!   first [`WAY`] test classes, the first [`SHOT`] images of each as support and the next
//!   [`QUERY`] as queries.
//!
//! `cargo test -p runtime-ffi --test fixtures` checks the committed files against what this
//! writes (pixels for the PNG, bytes for the rest); `RT_FFI_REGEN=1` rewrites them.

use std::path::{Path, PathBuf};

use image::RgbImage;

const WAY: usize = 3;
const SHOT: usize = 2;
const QUERY: usize = 2;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn ffi_fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// The first MAFL test face, MAFL-cropped.
fn face() -> RgbImage {
    let faces = root().join("fixtures/tiny/faces");
    let list = std::fs::read_to_string(faces.join("MAFL/testing.txt")).unwrap();
    let name = list.lines().next().unwrap().trim();
    let img = data::load_rgb(&faces.join("img_align_celeba").join(name)).unwrap();
    let (x0, y0, side) = data::mafl_crop_window(img.width(), img.height());
    image::imageops::crop_imm(&img, x0, y0, side, side).to_image()
}

/// `(role, label, name)` of the episode, in file order.
fn episode() -> Vec<(&'static str, usize, String)> {
    let csv = std::fs::read_to_string(root().join("fixtures/tiny/objects/test.csv")).unwrap();
    let mut classes: Vec<(String, Vec<String>)> = Vec::new();
    for line in csv.lines().skip(1) {
        let (file, label) = line.split_once(',').unwrap();
        let stem = file.trim_end_matches(".png").to_string();
        match classes.iter_mut().find(|(l, _)| l == label) {
            Some((_, v)) => v.push(stem),
            None => classes.push((label.to_string(), vec![stem])),
        }
    }
    assert!(
        classes.len() >= WAY,
        "test.csv has {} classes",
        classes.len()
    );
    let mut out = Vec::new();
    for (role, skip, take) in [("support", 0, SHOT), ("query", SHOT, QUERY)] {
        for (label, (_, images)) in classes.iter().take(WAY).enumerate() {
            assert!(images.len() >= SHOT + QUERY);
            for name in images.iter().skip(skip).take(take) {
                out.push((role, label, name.clone()));
            }
        }
    }
    out
}

fn episode_text() -> String {
    let mut s = String::from(
        "# One few-shot episode for examples/c/fewshot_landmarks.c (written by\n\
         # runtime-ffi/tests/fixtures.rs): role, label, image. objects/<image>.rgb is\n\
         # fixtures/tiny/objects/images/<image>.png as raw RGB8.\n",
    );
    for (role, label, name) in episode() {
        s += &format!("{role} {label} {name}\n");
    }
    s
}

/// Writes (regenerate) or compares (check) one file; returns a line describing a mismatch.
fn put(path: &Path, want: &[u8], regen: bool) -> Option<String> {
    if regen {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, want).unwrap();
        return None;
    }
    match std::fs::read(path) {
        Ok(got) if got == want => None,
        Ok(_) => Some(format!("{} differs", path.display())),
        Err(e) => Some(format!("{}: {e}", path.display())),
    }
}

#[test]
fn c_example_inputs_are_current() {
    let regen = std::env::var_os("RT_FFI_REGEN").is_some();
    let dir = ffi_fixtures();
    let mut bad = Vec::new();

    let face = face();
    assert_eq!(
        face.dimensions(),
        (16, 16),
        "the tiny models take 16×16 inputs"
    );
    bad.extend(put(&dir.join("face.rgb"), face.as_raw(), regen));
    let png = dir.join("face.png");
    if regen {
        face.save(&png).unwrap();
    } else {
        match data::load_rgb(&png) {
            Ok(p) if p == face => {}
            _ => bad.push(format!("{} differs or is unreadable", png.display())),
        }
    }

    bad.extend(put(
        &dir.join("episode.txt"),
        episode_text().as_bytes(),
        regen,
    ));
    let objects = root().join("fixtures/tiny/objects/images");
    for (_, _, name) in episode() {
        let img = data::load_rgb(&objects.join(format!("{name}.png"))).unwrap();
        assert_eq!(img.dimensions(), (16, 16));
        let rgb = dir.join("objects").join(format!("{name}.rgb"));
        bad.extend(put(&rgb, img.as_raw(), regen));
    }
    assert!(
        bad.is_empty(),
        "stale C example inputs:\n  {}\nregenerate with RT_FFI_REGEN=1 cargo test -p runtime-ffi --test fixtures",
        bad.join("\n  ")
    );
}
