//! The C API called through Rust, as a C program would call it: on the committed fixtures the
//! outputs must equal runtime-core's direct API bit for bit, and every misuse (NULL, short or
//! misaligned buffers, overlaps, malformed model bytes, handles used out of order) must return
//! its status code.

use std::ffi::CStr;
use std::path::{Path, PathBuf};
use std::ptr::{null, null_mut};

use runtime_core::heads::centroid::CentroidHead;
use runtime_core::heads::landmarks;
use runtime_core::heads::linear::{LinearHead, SgdRecipe};
use runtime_core::{Dtype, Model, Task};
use runtime_ffi::*;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

const LANDMARKS: &str = "fixtures/tiny/landmarks-int8.safetensors";
const BACKBONE: &str = "fixtures/tiny/backbone-int8.safetensors";
const BACKBONE_F32: &str = "fixtures/tiny/backbone-f32.safetensors";

/// A loaded handle and the bytes it borrows (declared after the handle, so dropped after it).
struct Loaded {
    handle: Box<RtModel>,
    _bytes: Vec<u8>,
}

impl Loaded {
    fn new(bytes: Vec<u8>) -> Self {
        let mut handle = Box::<RtModel>::default();
        let s = unsafe { rt_model_load(&mut *handle, bytes.as_ptr(), bytes.len()) };
        assert_eq!(s, RtStatus::Ok);
        Loaded {
            handle,
            _bytes: bytes,
        }
    }

    fn ptr(&self) -> *const RtModel {
        &*self.handle
    }

    fn info(&self) -> RtModelInfo {
        let mut info = std::mem::MaybeUninit::<RtModelInfo>::uninit();
        assert_eq!(
            unsafe { rt_model_get_info(self.ptr(), info.as_mut_ptr()) },
            RtStatus::Ok
        );
        unsafe { info.assume_init() }
    }

    /// `rt_run_u8` into fresh buffers.
    fn run_u8(&self, image: &[u8]) -> Result<Vec<f32>, RtStatus> {
        let info = self.info();
        let mut arena = vec![0u8; info.arena_bytes];
        let mut out = vec![0f32; info.output_len];
        let s = unsafe {
            rt_run_u8(
                self.ptr(),
                image.as_ptr(),
                image.len(),
                arena.as_mut_ptr(),
                arena.len(),
                out.as_mut_ptr(),
                out.len(),
            )
        };
        if s == RtStatus::Ok {
            Ok(out)
        } else {
            Err(s)
        }
    }
}

impl Drop for Loaded {
    fn drop(&mut self) {
        assert_eq!(unsafe { rt_model_release(&mut *self.handle) }, RtStatus::Ok);
    }
}

/// runtime-core's own answer: preprocess the RGB8 image, run, dequantise.
fn direct(bytes: &[u8], image: &[u8]) -> Vec<f32> {
    let m = Model::parse(bytes).unwrap();
    let mut arena = vec![0u8; m.arena_bytes()];
    let mut out = vec![0f32; m.output_len()];
    m.preprocess_rgb8(image, &mut arena).unwrap();
    m.run(&mut arena, &mut out).unwrap();
    out
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// The C example's episode: `(is_support, label, rgb)`.
fn episode() -> Vec<(bool, u8, Vec<u8>)> {
    let text = String::from_utf8(read("runtime-ffi/fixtures/episode.txt")).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let rgb = read(&format!("runtime-ffi/fixtures/objects/{}.rgb", f[2]));
            (f[0] == "support", f[1].parse().unwrap(), rgb)
        })
        .collect()
}

#[test]
fn info_describes_the_model() {
    for (path, task) in [(LANDMARKS, RtTask::Landmarks), (BACKBONE, RtTask::Features)] {
        let bytes = read(path);
        let m = Model::parse(&bytes).unwrap();
        let info = Loaded::new(bytes.clone()).info();
        let [h, w, c] = m.input_shape();
        let d = m.input_desc();
        assert_eq!(
            info,
            RtModelInfo {
                arena_bytes: m.arena_bytes(),
                input_h: h,
                input_w: w,
                input_c: c,
                input_len: h * w * c,
                dtype: RtDtype::Int8,
                input_scale: d.scale,
                input_zero_point: d.zp,
                output_len: m.output_len(),
                task,
                weight_bytes: m.weight_bytes(),
                macs: m.macs(),
            },
            "{path}"
        );
        assert_eq!((h, w, c), (16, 16, 3));
    }
    let f32_info = Loaded::new(read(BACKBONE_F32)).info();
    assert_eq!(f32_info.dtype, RtDtype::F32);
    assert_eq!((f32_info.input_scale, f32_info.input_zero_point), (1.0, 0));
}

#[test]
fn landmarks_equal_runtime_core() {
    let bytes = read(LANDMARKS);
    let face = read("runtime-ffi/fixtures/face.rgb");
    let model = Loaded::new(bytes.clone());
    let out = model.run_u8(&face).unwrap();
    let want = direct(&bytes, &face);
    assert_eq!(bits(&out), bits(&want));

    let mut points = [RtPoint::default(); RT_LANDMARKS];
    let s = unsafe {
        rt_landmarks(
            model.ptr(),
            out.as_ptr(),
            out.len(),
            points.as_mut_ptr(),
            points.len(),
        )
    };
    assert_eq!(s, RtStatus::Ok);
    let want_pts = landmarks::decode(&want, 16, 16).unwrap();
    for (p, q) in points.iter().zip(want_pts) {
        assert_eq!(
            (p.x.to_bits(), p.y.to_bits()),
            (q.x.to_bits(), q.y.to_bits())
        );
        // A face: every landmark inside the image.
        assert!(
            (0.0..16.0).contains(&p.x) && (0.0..16.0).contains(&p.y),
            "{p:?}"
        );
    }
}

#[test]
fn features_equal_runtime_core_for_u8_i8_and_f32_models() {
    let (_, _, img) = episode().remove(0);
    for path in [BACKBONE, BACKBONE_F32] {
        let bytes = read(path);
        let model = Loaded::new(bytes.clone());
        assert_eq!(
            bits(&model.run_u8(&img).unwrap()),
            bits(&direct(&bytes, &img))
        );
    }

    // rt_run_i8 on the input quantised as runtime-core quantises it.
    let bytes = read(BACKBONE);
    let m = Model::parse(&bytes).unwrap();
    let mut arena = vec![0u8; m.arena_bytes()];
    m.preprocess_rgb8(&img, &mut arena).unwrap();
    let xq = m.input_slot_i8(&mut arena).unwrap().to_vec();
    let mut want = vec![0f32; m.output_len()];
    m.run_int8(&xq, &mut arena, &mut want).unwrap();
    let model = Loaded::new(bytes.clone());
    let mut arena = vec![0u8; m.arena_bytes()];
    let mut out = vec![0f32; m.output_len()];
    let run_i8 = |model: *const RtModel, arena: &mut [u8], out: &mut [f32]| unsafe {
        rt_run_i8(
            model,
            xq.as_ptr(),
            xq.len(),
            arena.as_mut_ptr(),
            arena.len(),
            out.as_mut_ptr(),
            out.len(),
        )
    };
    assert_eq!(run_i8(model.ptr(), &mut arena, &mut out), RtStatus::Ok);
    assert_eq!(bits(&out), bits(&want));
    assert_eq!(bits(&out), bits(&direct(&bytes, &img)));

    // An f32 model takes no quantised input.
    let f = Loaded::new(read(BACKBONE_F32));
    let mut arena = vec![0u8; f.info().arena_bytes];
    assert_eq!(run_i8(f.ptr(), &mut arena, &mut out), RtStatus::WrongDtype);
}

/// Features of every episode image through the C API, and the support set as the heads take it.
fn episode_features() -> (Vec<f32>, Vec<u8>, Vec<Vec<f32>>, Vec<u8>) {
    let model = Loaded::new(read(BACKBONE));
    let (mut support, mut labels, mut queries, mut query_labels) = (vec![], vec![], vec![], vec![]);
    for (is_support, label, rgb) in episode() {
        let f = model.run_u8(&rgb).unwrap();
        if is_support {
            support.extend(f);
            labels.push(label);
        } else {
            queries.push(f);
            query_labels.push(label);
        }
    }
    (support, labels, queries, query_labels)
}

#[test]
fn heads_equal_runtime_core() {
    let (support, labels, queries, _) = episode_features();
    let dim = queries[0].len();
    let n_way = 3;
    let seed = 7;
    let recipe = rt_sgd_recipe_default();
    assert_eq!(SgdRecipe::from(recipe), SgdRecipe::default());

    let linear =
        LinearHead::fit(&support, &labels, n_way, dim, &SgdRecipe::default(), seed).unwrap();
    let centroid = CentroidHead::fit(&support, &labels, n_way, dim).unwrap();
    let mut lin = RtHead::default();
    let mut cen = RtHead::default();
    unsafe {
        let s = rt_head_fit_linear(
            &mut lin,
            support.as_ptr(),
            support.len(),
            labels.as_ptr(),
            labels.len(),
            n_way,
            dim,
            &recipe,
            seed,
        );
        assert_eq!(s, RtStatus::Ok);
        let s = rt_head_fit_centroid(
            &mut cen,
            support.as_ptr(),
            support.len(),
            labels.as_ptr(),
            labels.len(),
            n_way,
            dim,
        );
        assert_eq!(s, RtStatus::Ok);
    }
    for q in &queries {
        let mut want = [0f32; 3];
        let mut got = [0f32; 4];
        let mut class = usize::MAX;
        linear.logits(q, &mut want).unwrap();
        unsafe {
            assert_eq!(
                rt_head_scores(&lin, q.as_ptr(), q.len(), got.as_mut_ptr(), got.len()),
                RtStatus::Ok
            );
            assert_eq!(
                rt_head_predict(&lin, q.as_ptr(), q.len(), &mut class),
                RtStatus::Ok
            );
        }
        assert_eq!(bits(&got[..3]), bits(&want));
        assert_eq!(class, linear.predict(q).unwrap());

        centroid.scores(q, &mut want).unwrap();
        unsafe {
            assert_eq!(
                rt_head_scores(&cen, q.as_ptr(), q.len(), got.as_mut_ptr(), 3),
                RtStatus::Ok
            );
            assert_eq!(
                rt_head_predict(&cen, q.as_ptr(), q.len(), &mut class),
                RtStatus::Ok
            );
        }
        assert_eq!(bits(&got[..3]), bits(&want));
        assert_eq!(class, centroid.predict(q).unwrap());
    }
    unsafe {
        assert_eq!(rt_head_release(&mut lin), RtStatus::Ok);
        assert_eq!(rt_head_release(&mut cen), RtStatus::Ok);
    }
}

#[test]
fn head_misuse_returns_codes() {
    let (support, labels, queries, _) = episode_features();
    let dim = queries[0].len();
    let recipe = rt_sgd_recipe_default();
    let fit = |h: &mut RtHead, f: &[f32], l: &[u8], n_way: usize, r: &RtSgdRecipe| unsafe {
        rt_head_fit_linear(
            h,
            f.as_ptr(),
            f.len(),
            l.as_ptr(),
            l.len(),
            n_way,
            dim,
            r,
            1,
        )
    };
    let mut h = RtHead::default();
    let q = &queries[0];
    let mut class = 0usize;
    let mut scores = [0f32; 3];
    unsafe {
        // Not fitted yet.
        assert_eq!(
            rt_head_predict(&h, q.as_ptr(), dim, &mut class),
            RtStatus::HeadNotFitted
        );
        assert_eq!(
            rt_head_scores(&h, q.as_ptr(), dim, scores.as_mut_ptr(), 3),
            RtStatus::HeadNotFitted
        );
        // Bad support sets.
        assert_eq!(
            fit(&mut h, &support[1..], &labels, 3, &recipe),
            RtStatus::HeadShape
        );
        assert_eq!(
            fit(&mut h, &support, &labels, 2, &recipe),
            RtStatus::HeadLabel
        );
        assert_eq!(
            fit(&mut h, &support, &labels, 4, &recipe),
            RtStatus::HeadLabel
        );
        let no_batch = RtSgdRecipe { batch: 0, ..recipe };
        assert_eq!(
            fit(&mut h, &support, &labels, 3, &no_batch),
            RtStatus::HeadCapacity
        );
        assert_eq!(fit(&mut h, &[], &[], 3, &recipe), RtStatus::HeadShape);
        assert_eq!(
            rt_head_fit_linear(
                &mut h,
                support.as_ptr(),
                support.len(),
                labels.as_ptr(),
                labels.len(),
                3,
                dim,
                null(),
                1
            ),
            RtStatus::NullPointer
        );
        assert_eq!(
            rt_head_fit_centroid(
                null_mut(),
                support.as_ptr(),
                support.len(),
                labels.as_ptr(),
                labels.len(),
                3,
                dim
            ),
            RtStatus::NullPointer
        );
        assert_eq!(
            rt_head_fit_centroid(
                &mut h,
                null(),
                support.len(),
                labels.as_ptr(),
                labels.len(),
                3,
                dim
            ),
            RtStatus::NullPointer
        );
        // Fitted: short score buffers, wrong feature lengths, NULL outputs, refits.
        assert_eq!(fit(&mut h, &support, &labels, 3, &recipe), RtStatus::Ok);
        assert_eq!(
            fit(&mut h, &support, &labels, 3, &recipe),
            RtStatus::HandleInUse
        );
        assert_eq!(
            rt_head_scores(&h, q.as_ptr(), dim, scores.as_mut_ptr(), 2),
            RtStatus::OutputLength
        );
        assert_eq!(
            rt_head_scores(&h, q.as_ptr(), dim - 1, scores.as_mut_ptr(), 3),
            RtStatus::HeadShape
        );
        assert_eq!(
            rt_head_predict(&h, q.as_ptr(), dim + 1, &mut class),
            RtStatus::HeadShape
        );
        assert_eq!(
            rt_head_predict(&h, q.as_ptr(), dim, null_mut()),
            RtStatus::NullPointer
        );
        assert_eq!(
            rt_head_predict(&h, null(), dim, &mut class),
            RtStatus::NullPointer
        );
        assert_eq!(
            rt_head_predict(null(), q.as_ptr(), dim, &mut class),
            RtStatus::NullPointer
        );
        // Released (twice is fine), then unusable until fitted again.
        assert_eq!(rt_head_release(&mut h), RtStatus::Ok);
        assert_eq!(rt_head_release(&mut h), RtStatus::Ok);
        assert_eq!(rt_head_release(null_mut()), RtStatus::NullPointer);
        assert_eq!(
            rt_head_predict(&h, q.as_ptr(), dim, &mut class),
            RtStatus::HeadNotFitted
        );
    }
}

#[test]
fn malformed_model_bytes_are_refused() {
    let good = read(LANDMARKS);
    let load = |bytes: &[u8]| {
        let mut h = RtModel::default();
        let s = unsafe { rt_model_load(&mut h, bytes.as_ptr(), bytes.len()) };
        // A failed load leaves the handle not loaded.
        if s != RtStatus::Ok {
            let mut info = std::mem::MaybeUninit::<RtModelInfo>::uninit();
            assert_eq!(
                unsafe { rt_model_get_info(&h, info.as_mut_ptr()) },
                RtStatus::NotLoaded
            );
        }
        assert_eq!(unsafe { rt_model_release(&mut h) }, RtStatus::Ok);
        s
    };
    assert_eq!(load(&good), RtStatus::Ok);
    assert_eq!(load(&[]), RtStatus::ModelContainer);
    assert_eq!(load(&good[..good.len() - 1]), RtStatus::ModelContainer);
    assert_eq!(load(&good[..100]), RtStatus::ModelContainer);
    assert_eq!(
        load(b"this is not a model file at all"),
        RtStatus::ModelContainer
    );
    let mut flipped = good.clone();
    flipped[3] ^= 0x40; // header length now beyond the file
    assert_eq!(load(&flipped), RtStatus::ModelContainer);

    // A valid safetensors file without the graph entry.
    let header = br#"{"__metadata__":{"format":"pt"}}"#;
    let mut no_graph = (header.len() as u64).to_le_bytes().to_vec();
    no_graph.extend_from_slice(header);
    assert_eq!(load(&no_graph), RtStatus::ModelNoGraph);

    // A graph in a format version this runtime does not read (same length: the container stays
    // valid).
    let at = good
        .windows(9)
        .position(|w| w == b"rtgraph 1")
        .expect("graph text");
    let mut v9 = good.clone();
    v9[at + 8] = b'9';
    assert_eq!(load(&v9), RtStatus::ModelGraph);

    // NULL bytes, NULL handle.
    let mut h = RtModel::default();
    assert_eq!(
        unsafe { rt_model_load(&mut h, null(), 10) },
        RtStatus::NullPointer
    );
    assert_eq!(
        unsafe { rt_model_load(null_mut(), good.as_ptr(), good.len()) },
        RtStatus::NullPointer
    );
    // A length no buffer can have.
    assert_eq!(
        unsafe { rt_model_load(&mut h, good.as_ptr(), usize::MAX) },
        RtStatus::BadLength
    );
}

#[test]
fn handles_are_used_in_order() {
    let bytes = read(BACKBONE);
    let mut h = RtModel::default();
    let mut info = std::mem::MaybeUninit::<RtModelInfo>::uninit();
    unsafe {
        assert_eq!(
            rt_model_get_info(&h, info.as_mut_ptr()),
            RtStatus::NotLoaded
        );
        assert_eq!(
            rt_model_load(&mut h, bytes.as_ptr(), bytes.len()),
            RtStatus::Ok
        );
        assert_eq!(
            rt_model_load(&mut h, bytes.as_ptr(), bytes.len()),
            RtStatus::HandleInUse
        );
        assert_eq!(rt_model_get_info(&h, info.as_mut_ptr()), RtStatus::Ok);
        assert_eq!(rt_model_get_info(&h, null_mut()), RtStatus::NullPointer);
        assert_eq!(
            rt_model_get_info(null(), info.as_mut_ptr()),
            RtStatus::NullPointer
        );
        assert_eq!(rt_model_release(&mut h), RtStatus::Ok);
        assert_eq!(rt_model_release(&mut h), RtStatus::Ok);
        assert_eq!(rt_model_release(null_mut()), RtStatus::NullPointer);
        assert_eq!(
            rt_model_get_info(&h, info.as_mut_ptr()),
            RtStatus::NotLoaded
        );
        // Reusable after release.
        assert_eq!(
            rt_model_load(&mut h, bytes.as_ptr(), bytes.len()),
            RtStatus::Ok
        );
        assert_eq!(rt_model_release(&mut h), RtStatus::Ok);
    }
}

#[test]
fn run_misuse_returns_codes() {
    let bytes = read(LANDMARKS);
    let model = Loaded::new(bytes.clone());
    let info = model.info();
    let face = read("runtime-ffi/fixtures/face.rgb");
    let mut arena = vec![0u8; info.arena_bytes];
    let mut out = vec![0f32; info.output_len + 1];
    let run = |m: *const RtModel,
               img: *const u8,
               img_len: usize,
               arena: *mut u8,
               arena_len: usize,
               out: *mut f32,
               out_len: usize| unsafe {
        rt_run_u8(m, img, img_len, arena, arena_len, out, out_len)
    };
    let (a, o) = (arena.as_mut_ptr(), out.as_mut_ptr());
    let (n_a, n_o, n_i) = (arena.len(), info.output_len, face.len());
    let img = face.as_ptr();
    assert_eq!(run(model.ptr(), img, n_i, a, n_a, o, n_o), RtStatus::Ok);
    // NULL anywhere.
    assert_eq!(run(null(), img, n_i, a, n_a, o, n_o), RtStatus::NullPointer);
    assert_eq!(
        run(model.ptr(), null(), n_i, a, n_a, o, n_o),
        RtStatus::NullPointer
    );
    assert_eq!(
        run(model.ptr(), img, n_i, null_mut(), n_a, o, n_o),
        RtStatus::NullPointer
    );
    assert_eq!(
        run(model.ptr(), img, n_i, a, n_a, null_mut(), n_o),
        RtStatus::NullPointer
    );
    // Short or long buffers.
    assert_eq!(
        run(model.ptr(), img, n_i, a, n_a - 1, o, n_o),
        RtStatus::ArenaTooSmall
    );
    assert_eq!(
        run(model.ptr(), img, n_i - 1, a, n_a, o, n_o),
        RtStatus::InputLength
    );
    assert_eq!(
        run(model.ptr(), img, n_i, a, n_a, o, n_o - 1),
        RtStatus::OutputLength
    );
    assert_eq!(
        run(model.ptr(), img, n_i, a, n_a, o, n_o + 1),
        RtStatus::OutputLength
    );
    assert_eq!(
        run(model.ptr(), img, n_i, a, usize::MAX, o, n_o),
        RtStatus::BadLength
    );
    // A float buffer at an odd address.
    let o_odd = unsafe { (o as *mut u8).add(1) } as *mut f32;
    assert_eq!(
        run(model.ptr(), img, n_i, a, n_a, o_odd, n_o - 1),
        RtStatus::Misaligned
    );
    // Overlaps: output inside the arena, input inside the arena, arena over the model bytes.
    let mut big = vec![0f32; n_a];
    let b = big.as_mut_ptr();
    let arena_in_big = b as *mut u8;
    assert_eq!(
        run(
            model.ptr(),
            img,
            n_i,
            arena_in_big,
            n_a,
            unsafe { b.add(4) },
            n_o
        ),
        RtStatus::Overlap
    );
    assert_eq!(
        run(model.ptr(), a as *const u8, n_i, a, n_a, o, n_o),
        RtStatus::Overlap
    );
    let model_bytes = model._bytes.as_ptr() as *mut u8;
    assert_eq!(
        run(model.ptr(), img, n_i, model_bytes, n_a, o, n_o),
        RtStatus::Overlap
    );
    // A zeroed handle.
    let zero = RtModel::default();
    assert_eq!(run(&zero, img, n_i, a, n_a, o, n_o), RtStatus::NotLoaded);

    // Landmark decoding: right task, right lengths.
    let mut pts = [RtPoint::default(); RT_LANDMARKS];
    let p = pts.as_mut_ptr();
    let dec = |m: *const RtModel, out: *const f32, n: usize, p: *mut RtPoint, np: usize| unsafe {
        rt_landmarks(m, out, n, p, np)
    };
    assert_eq!(dec(model.ptr(), o, n_o, p, 5), RtStatus::Ok);
    assert_eq!(dec(model.ptr(), o, n_o, p, 4), RtStatus::OutputLength);
    assert_eq!(dec(model.ptr(), o, n_o - 1, p, 5), RtStatus::OutputLength);
    assert_eq!(dec(model.ptr(), null(), n_o, p, 5), RtStatus::NullPointer);
    assert_eq!(
        dec(model.ptr(), o, n_o, null_mut(), 5),
        RtStatus::NullPointer
    );
    assert_eq!(
        dec(model.ptr(), o, n_o, o as *mut RtPoint, 5),
        RtStatus::Overlap
    );
    let backbone = Loaded::new(read(BACKBONE));
    assert_eq!(dec(backbone.ptr(), o, n_o, p, 5), RtStatus::WrongTask);
    assert_eq!(Model::parse(&bytes).unwrap().task(), Task::Landmarks);
    assert_eq!(Model::parse(&bytes).unwrap().dtype(), Dtype::Int8);
}

#[test]
fn every_code_has_an_actionable_message() {
    for code in 0..RT_STATUS_COUNT {
        let p = rt_error_message(code);
        assert!(!p.is_null());
        let m = unsafe { CStr::from_ptr(p) }.to_str().unwrap();
        assert!(!m.is_empty(), "code {code}");
    }
    let m = |c| {
        unsafe { CStr::from_ptr(rt_error_message(c)) }
            .to_str()
            .unwrap()
    };
    assert_eq!(m(RtStatus::Ok as i32), "success");
    assert!(m(RtStatus::ArenaTooSmall as i32).contains("arena_bytes"));
    assert!(m(RtStatus::ModelGraph as i32).contains("runtime-cli inspect"));
    assert!(m(-1).starts_with("unknown status code"));
    assert!(m(RT_STATUS_COUNT).starts_with("unknown status code"));
    assert!(m(i32::MAX).starts_with("unknown status code"));
}
