//! The readers on snippets in the real file formats, well-formed and malformed.
use data::{image_folder, mafl_crop, CelebA, MiniImageNet, Split};
use std::path::Path;

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// PNG bytes whatever the extension: the reader sniffs the format from the content.
fn png(path: &Path, w: u32, h: u32, v: u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let img = image::RgbImage::from_pixel(w, h, image::Rgb([v, v / 2, 255 - v]));
    img.save_with_format(path, image::ImageFormat::Png).unwrap();
}

fn err_of<T: std::fmt::Debug>(r: Result<T, data::DataError>) -> String {
    r.unwrap_err().to_string()
}

#[test]
fn mini_imagenet_loads_images_and_reports_missing_and_corrupt_ones() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    write(
        &root.join("test.csv"),
        "filename,label\nn0153282900000005.jpg,n01532829\nn0153282900000006.jpg,n01532829\n\
         n0155843700000001.jpg,n01558437\n",
    );
    png(&root.join("images/n0153282900000005.jpg"), 5, 4, 10); // PNG bytes under .jpg: sniffed
    write(
        &root.join("images/n0153282900000006.jpg"),
        "garbage, not a JPEG",
    );
    let ds = MiniImageNet::open(root)
        .unwrap()
        .split(Split::Test)
        .unwrap();
    assert_eq!(ds.len(), 3);
    assert_eq!(ds.num_classes(), 2);
    let (img, label, lm) = ds.load(0).unwrap();
    assert_eq!((img.dimensions(), label, lm), ((5, 4), 0, None));
    assert_eq!(img.get_pixel(0, 0).0, [10, 5, 245]);
    let e = err_of(ds.load(1));
    assert!(
        e.contains("n0153282900000006.jpg") && e.contains("decode"),
        "{e}"
    );
    let e = err_of(ds.load(2));
    assert!(e.contains("n0155843700000001.jpg"), "{e}");
    let e = err_of(ds.check_files());
    assert!(
        e.contains("n0155843700000001.jpg") && e.contains("missing"),
        "{e}"
    );
    assert!(ds.load(3).is_err());
}

#[test]
fn image_folder_loads_labelled_images() {
    let d = tempfile::tempdir().unwrap();
    png(&d.path().join("b_class/1.png"), 2, 2, 100);
    png(&d.path().join("a_class/1.png"), 3, 3, 50);
    let ds = image_folder(d.path()).unwrap();
    let (img, label, _) = ds.load(1).unwrap();
    assert_eq!((img.dimensions(), label), ((2, 2), 1));
    ds.check_files().unwrap();
}

const IDENTITY: &str = "000001.jpg 2880\n000002.jpg 2937\n000003.jpg 8692\n000004.jpg 5805\n000005.jpg 2880\n000006.jpg 4153\n";
const LANDMARKS: &str = "6\r\n\
lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y \r\n\
000001.jpg    69  109   106  113    77  142    73  152   108  154\r\n\
000002.jpg    69  110   107  112    81  135    70  151   108  153\r\n\
000003.jpg    76  112   104  106   108  128    74  156    98  158\r\n\
000004.jpg    72  113   108  108   101  138    71  155   101  151\r\n\
000005.jpg    66  114   112  112    86  119    71  147   104  150\r\n\
000006.jpg    71  111   106  110    94  131    74  154   102  153\r\n";
const PARTITION: &str =
    "000001.jpg 0\n000002.jpg 0\n000003.jpg 0\n000004.jpg 0\n000005.jpg 1\n000006.jpg 2\n";

/// A 6-image CelebA root: images 3 (train) and 6 (test partition) are MAFL.
fn celeba_root(dir: &Path) {
    write(&dir.join("identity_CelebA.txt"), IDENTITY);
    write(&dir.join("list_landmarks_align_celeba.txt"), LANDMARKS);
    write(&dir.join("list_eval_partition.txt"), PARTITION);
    write(&dir.join("MAFL/training.txt"), "000003.jpg\n");
    write(&dir.join("MAFL/testing.txt"), "000006.jpg\n");
}

#[test]
fn celeba_pretraining_excludes_mafl_and_reindexes_identities() {
    let d = tempfile::tempdir().unwrap();
    celeba_root(d.path());
    let c = CelebA::open(d.path()).unwrap();
    assert_eq!(c.len(), 6);
    let pre = c.pretrain().unwrap();
    let names: Vec<String> = pre
        .items
        .iter()
        .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    // Train partition = 1..4; MAFL image 3 removed.
    assert_eq!(names, vec!["000001.jpg", "000002.jpg", "000004.jpg"]);
    // Identities 2880, 2937, 5805 -> 0, 1, 2 (sorted by number).
    assert_eq!(pre.class_names, vec!["2880", "2937", "5805"]);
    assert_eq!(
        pre.items.iter().map(|x| x.1).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert!(pre.landmarks.is_none());
    assert!(pre.items[0]
        .0
        .starts_with(d.path().join("img_align_celeba")));

    let test = c.mafl_test();
    assert_eq!(test.len(), 1);
    assert_eq!(
        test.landmarks.as_ref().unwrap()[0],
        [
            [71.0, 111.0],
            [106.0, 110.0],
            [94.0, 131.0],
            [74.0, 154.0],
            [102.0, 153.0]
        ]
    );
    assert_eq!(c.mafl_train().items[0].0.file_name().unwrap(), "000003.jpg");
    assert_eq!(c.landmarks("000002.jpg").unwrap()[2], [81.0, 135.0]);
    assert_eq!(c.identity("000005.jpg"), Some(2880));

    // Loading goes through the image folder; a missing image names itself.
    png(&d.path().join("img_align_celeba/000006.jpg"), 178, 218, 7);
    let (img, _, lm) = test.load(0).unwrap();
    let (crop, lm2) = mafl_crop(&img, &lm.unwrap());
    assert_eq!(crop.dimensions(), (178, 178));
    assert_eq!(lm2[0], [71.0, 81.0]);
    let e = err_of(c.mafl_train().load(0));
    assert!(e.contains("000003.jpg"), "{e}");
}

/// Replace `from` by `to` in one file of a fresh root and return the open error.
fn broken(file: &str, from: &str, to: &str) -> String {
    let d = tempfile::tempdir().unwrap();
    celeba_root(d.path());
    let p = d.path().join(file);
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(text.contains(from), "test setup: `{from}` not in {file}");
    std::fs::write(&p, text.replacen(from, to, 1)).unwrap();
    err_of(CelebA::open(d.path()))
}

#[test]
fn malformed_celeba_files_name_file_and_line() {
    let lm = "list_landmarks_align_celeba.txt";
    let e = broken(lm, "6\r\n", "six\r\n");
    assert!(
        e.contains(&format!("{lm}:1:")) && e.contains("row count"),
        "{e}"
    );
    let e = broken(lm, "6\r\n", "7\r\n");
    assert!(
        e.contains(&format!("{lm}:1:")) && e.contains("says 7 rows but the file has 6"),
        "{e}"
    );
    let e = broken(lm, "nose_x nose_y", "nose_y nose_x");
    assert!(
        e.contains(&format!("{lm}:2:")) && e.contains("column names"),
        "{e}"
    );
    let e = broken(lm, "   108  154", "   108");
    assert!(
        e.contains(&format!("{lm}:3:"))
            && e.contains("expected 11 columns")
            && e.contains("found 10"),
        "{e}"
    );
    let e = broken(lm, "  110   107", "  11O   107");
    assert!(
        e.contains(&format!("{lm}:4:")) && e.contains("lefteye_y = `11O` is not a number"),
        "{e}"
    );
    let e = broken(lm, "000004.jpg    72", "000099.jpg    72");
    assert!(
        e.contains(&format!("{lm}:6: unknown label")) && e.contains("000099.jpg"),
        "{e}"
    );

    let id = "identity_CelebA.txt";
    let e = broken(id, "000002.jpg 2937", "000002.jpg 2937 extra");
    assert!(e.contains(&format!("{id}:2: expected 2 columns")), "{e}");
    let e = broken(id, "000002.jpg 2937", "000002.jpg x");
    assert!(
        e.contains(&format!("{id}:2:")) && e.contains("not an integer"),
        "{e}"
    );

    let part = "list_eval_partition.txt";
    let e = broken(part, "000005.jpg 1", "000005.jpg 3");
    assert!(
        e.contains(&format!("{part}:5: unknown label")) && e.contains("partition code 3"),
        "{e}"
    );
    let e = broken(part, "000006.jpg 2\n", "");
    assert!(
        e.contains(part) && e.contains("000006.jpg") && e.contains("no partition"),
        "{e}"
    );

    let e = broken("MAFL/testing.txt", "000006.jpg", "000777.jpg");
    assert!(
        e.contains("testing.txt:1: unknown label") && e.contains("000777.jpg"),
        "{e}"
    );
    let e = broken(
        "MAFL/training.txt",
        "000003.jpg\n",
        "000003.jpg\n000006.jpg\n",
    );
    assert!(
        e.contains("testing.txt") && e.contains("000006.jpg") && e.contains("also in training.txt"),
        "{e}"
    );
}

#[test]
fn missing_mafl_lists_are_an_error_not_a_silent_leak() {
    let d = tempfile::tempdir().unwrap();
    celeba_root(d.path());
    std::fs::remove_file(d.path().join("MAFL/testing.txt")).unwrap();
    let e = err_of(CelebA::open(d.path()));
    assert!(e.contains("MAFL") && e.contains("testing.txt"), "{e}");
}
