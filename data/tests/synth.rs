//! The generators: byte-identical output for any thread count, and readable by the readers.
use data::synth::{faces, objects};
use data::{CelebA, MiniImageNet, Split};
use std::collections::BTreeMap;
use std::path::Path;

fn snapshot(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

fn with_threads<T: Send>(n: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build()
        .unwrap()
        .install(f)
}

#[test]
fn objects_are_byte_identical_for_1_and_2_threads_and_readable() {
    let cfg = objects::ObjectsConfig {
        classes: 10,
        per_class: 3,
        size: 16,
        seed: 7,
        alignment: 1.0,
    };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let s = with_threads(1, || objects::generate_objects(&cfg, a.path()).unwrap());
    with_threads(2, || objects::generate_objects(&cfg, b.path()).unwrap());
    let (sa, sb) = (snapshot(a.path()), snapshot(b.path()));
    assert_eq!(sa.len(), 30 + 3);
    assert!(sa == sb, "outputs differ between 1 and 2 threads");
    assert_eq!(s.per_split, [(6, 18), (2, 6), (2, 6)]);

    let ds = MiniImageNet::open(a.path()).unwrap();
    let test = ds.split(Split::Test).unwrap();
    assert_eq!(test.class_names, vec!["s0008", "s0009"]);
    assert_eq!(test.class_counts(), vec![3, 3]);
    let (img, label, _) = test.load(4).unwrap();
    assert_eq!((img.dimensions(), label), ((16, 16), 1));
    let spec = objects::ClassDef::Object(objects::class_specs(7, 10).unwrap()[9]);
    assert_eq!(img, objects::render_object(7, 9, &spec, 1, 16));

    // A different seed gives different data.
    let c = tempfile::tempdir().unwrap();
    objects::generate_objects(&objects::ObjectsConfig { seed: 8, ..cfg }, c.path()).unwrap();
    assert!(snapshot(c.path()) != sa);

    // Another alignment changes only the novel classes: the train list and every train image
    // are byte-identical, so one pretraining serves the whole alignment sweep.
    let d = tempfile::tempdir().unwrap();
    objects::generate_objects(
        &objects::ObjectsConfig {
            alignment: 0.0,
            ..cfg.clone()
        },
        d.path(),
    )
    .unwrap();
    let train = std::fs::read_to_string(a.path().join("train.csv")).unwrap();
    assert_eq!(
        train,
        std::fs::read_to_string(d.path().join("train.csv")).unwrap()
    );
    for line in train.lines().skip(1) {
        let f = line.split(',').next().unwrap();
        let img = |root: &std::path::Path| std::fs::read(root.join("images").join(f)).unwrap();
        assert_eq!(img(a.path()), img(d.path()), "{f}");
    }
    let test_img = |root: &std::path::Path| {
        let t = std::fs::read_to_string(root.join("test.csv")).unwrap();
        let f = t
            .lines()
            .nth(1)
            .unwrap()
            .split(',')
            .next()
            .unwrap()
            .to_string();
        std::fs::read(root.join("images").join(f)).unwrap()
    };
    assert_ne!(test_img(a.path()), test_img(d.path()));
}

#[test]
fn faces_are_byte_identical_for_1_and_2_threads_and_readable() {
    let cfg = faces::FacesConfig {
        identities: 6,
        per_identity: 5,
        size: 24,
        seed: 3,
    };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let s = with_threads(1, || faces::generate_faces(&cfg, a.path()).unwrap());
    with_threads(2, || faces::generate_faces(&cfg, b.path()).unwrap());
    let sa = snapshot(a.path());
    assert!(
        sa == snapshot(b.path()),
        "outputs differ between 1 and 2 threads"
    );
    assert_eq!(sa.len(), 30 + 6);
    // 30 images: partitions 24/3/3, MAFL test round(1.5) = 2, train 6.
    assert_eq!(
        (s.partitions, s.mafl_test, s.mafl_train),
        ([24, 3, 3], 2, 6)
    );

    let c = CelebA::open(a.path()).unwrap();
    let exact = CelebA::open_preferring_exact(a.path()).unwrap();
    let pre = c.pretrain().unwrap();
    assert_eq!(pre.len(), s.pretrain);
    let mafl: Vec<_> = c
        .mafl_train()
        .items
        .into_iter()
        .chain(c.mafl_test().items)
        .map(|x| x.0)
        .collect();
    assert_eq!(mafl.len(), 8);
    assert!(
        pre.items.iter().all(|(p, _)| !mafl.contains(p)),
        "a MAFL image is in the pretraining set"
    );
    // Every identity file row names an identity in 1..=6; pretraining labels are 0..n.
    assert!(pre
        .class_names
        .iter()
        .all(|n| (1..=6).contains(&n.parse::<u32>().unwrap())));

    // The image on disk and its landmarks are what render_face gives for its identity.
    let test = exact.mafl_test();
    let (img, _, lm) = test.load(0).unwrap();
    assert_eq!(img.dimensions(), (24, faces::image_height(24)));
    let name = test.items[0]
        .0
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let ident = c.identity(&name).unwrap() as usize - 1;
    let lm = lm.unwrap();
    let found = (0..cfg.per_identity).find(|&k| faces::render_face(3, ident, k, 24).0 == img);
    let k = found.expect("image is not a render of its listed identity");
    let want = faces::render_face(3, ident, k, 24).1;
    for (p, q) in lm.iter().zip(want) {
        assert!(
            (p[0] - q[0]).abs() <= 0.005 && (p[1] - q[1]).abs() <= 0.005,
            "{lm:?} vs {want:?}"
        );
    }
    // The standard file holds the same points rounded to integers.
    let rounded = c.landmarks(&name).unwrap();
    for (p, q) in rounded.iter().zip(want) {
        assert_eq!(*p, [q[0].round(), q[1].round()]);
    }
}
