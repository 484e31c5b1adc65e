//! Hostile model bytes, made and run the same way on the device and on the host (issue #33
//! item 5). Written once and compiled three times: into the firmware's `hostile` mode
//! (`main.rs`), into runtime-ffi's host test (`runtime-ffi/tests/hostile.rs`) and into the QEMU
//! test's host half (`tests/tests/mcu_hostile.rs`), all through `#[path]`. Only `core`, `alloc`
//! and runtime-ffi's C API are used, so every number is the same on the Cortex-M4F and on x86
//! and the QEMU test can compare the firmware's status counts with the host's.
//!
//! [`Mutator`] makes case `k` of a fixture model deterministically, in the fuzzers' style
//! (`fuzz/fuzz_targets`): every truncation at a structural boundary first (inside the 8-byte
//! length field, around the end of the JSON header, at each tensor's data start and end), then
//! seeded random mutations: bit flips, byte and word overwrites with boundary values, random
//! truncations, a corrupted header-length field, and edits of the JSON header's text (a number,
//! in the graph or in `data_offsets`/`shape`, replaced by a huge, negative or malformed one; a
//! graph line deleted, duplicated or swapped with another). Edits that change the header's
//! length rewrite the length field, so they reach the graph parser instead of stopping at the
//! container check.
//!
//! [`run_case`] pushes one model through the C API exactly as C firmware would: `rt_model_load`,
//! `rt_model_get_info`, then (if it loaded) `rt_run_u8` and, for int8 models, `rt_run_i8` with
//! an arena of exactly `arena_bytes` and buffers of exactly `input_len` / `output_len` (or, when
//! those exceed what the caller has, the buffers it has, which must be refused with a code), and
//! `rt_landmarks` on landmark models; always `rt_model_release`.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicUsize, Ordering};

use runtime_ffi::{
    rt_landmarks, rt_model_get_info, rt_model_load, rt_model_release, rt_run_i8, rt_run_u8,
    RtDtype, RtModel, RtModelInfo, RtPoint, RtStatus, RtTask, RT_LANDMARKS,
};

/// What a case did to the base model (for the host test's per-kind report).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Cut at a structural boundary (`Mutator::boundaries`).
    TruncateBoundary,
    /// Cut at a random point.
    TruncateRandom,
    /// One to four random bits flipped, mostly in the header.
    BitFlip,
    /// One byte set to a boundary value or JSON syntax character.
    ByteOverwrite,
    /// A little-endian u32 or u64 boundary value written over 4 or 8 bytes.
    WordOverwrite,
    /// The header-length field set to a boundary value.
    HeaderLen,
    /// A number in the JSON header replaced by a huge, negative or malformed one.
    NumberEdit,
    /// A graph line deleted.
    LineDelete,
    /// A graph line duplicated.
    LineDuplicate,
    /// Two graph lines swapped.
    LineSwap,
}

/// The seeded kinds, drawn round-robin after the boundary truncations.
const RANDOM_KINDS: [Kind; 9] = [
    Kind::TruncateRandom,
    Kind::BitFlip,
    Kind::ByteOverwrite,
    Kind::WordOverwrite,
    Kind::HeaderLen,
    Kind::NumberEdit,
    Kind::LineDelete,
    Kind::LineDuplicate,
    Kind::LineSwap,
];

/// Bytes a case may add to the base model (a duplicated graph line, a longer number): the size
/// of the device's case buffer beyond the model.
pub const MAX_GROWTH: usize = 1024;

/// SplitMix64: tiny, seedable, the same on every target.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())]
    }
}

/// Makes the hostile cases of one well-formed model file.
pub struct Mutator<'a> {
    base: &'a [u8],
    /// End of the JSON header (`8 + n`), clamped to the file.
    header_end: usize,
    /// Truncation points: sorted, distinct, each `< base.len()`.
    boundaries: Vec<usize>,
    /// Byte range of the `rt.graph` string's contents (JSON-escaped text), if found.
    graph: Option<(usize, usize)>,
    seed: u64,
}

impl<'a> Mutator<'a> {
    /// Reads the base model's layout (header length, tensor data offsets, graph text span).
    /// `seed` separates the random cases of different fixtures.
    pub fn new(base: &'a [u8], seed: u64) -> Self {
        let n = base
            .get(..8)
            .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
            .unwrap_or(0);
        let header_end = (n as usize).saturating_add(8).min(base.len());
        let header = &base[8.min(base.len())..header_end];
        let mut b: Vec<usize> = (0..=9).collect();
        for d in [-1isize, 0, 1] {
            b.push(header_end.saturating_add_signed(d));
        }
        // Every tensor's data start and end (`"data_offsets":[a,b]`, relative to header_end).
        let key = b"\"data_offsets\":[";
        let mut i = 0;
        while let Some(p) = find(&header[i..], key) {
            let mut q = i + p + key.len();
            for _ in 0..2 {
                let (v, len) = parse_uint(header.get(q..).unwrap_or(&[]));
                b.push(header_end.saturating_add(v));
                q += len + 1; // the number and the `,` or `]`
            }
            i = q.min(header.len());
        }
        b.retain(|&x| x < base.len());
        b.sort_unstable();
        b.dedup();
        let graph = find(header, b"\"rt.graph\":\"").map(|p| {
            let start = 8 + p + b"\"rt.graph\":\"".len();
            let mut end = start;
            while end < header_end && base[end] != b'"' {
                end += if base[end] == b'\\' { 2 } else { 1 };
            }
            (start, end.min(header_end))
        });
        Mutator {
            base,
            header_end,
            boundaries: b,
            graph,
            seed,
        }
    }

    /// Number of boundary truncations: cases `0..boundaries()` are those, every later case a
    /// seeded random mutation.
    pub fn boundaries(&self) -> usize {
        self.boundaries.len()
    }

    /// Writes case `k` into `out` and returns its kind and length; `None` if it does not fit in
    /// `out` (never with `out.len() >= base.len() + MAX_GROWTH`).
    pub fn case(&self, k: usize, out: &mut [u8]) -> Option<(Kind, usize)> {
        let base = self.base;
        if let Some(&cut) = self.boundaries.get(k) {
            out.get_mut(..cut)?.copy_from_slice(&base[..cut]);
            return Some((Kind::TruncateBoundary, cut));
        }
        let j = k - self.boundaries.len();
        let kind = RANDOM_KINDS[j % RANDOM_KINDS.len()];
        let mut r = Rng(self.seed ^ (k as u64).wrapping_mul(0xa076_1d64_78bd_642f));
        let len = base.len();
        // Positions: three in four inside the header (length field included), where parsing
        // happens; the rest anywhere (tensor data: the model must still load or be refused).
        let pos = |r: &mut Rng| {
            if r.below(4) < 3 {
                r.below(self.header_end.max(1))
            } else {
                r.below(len)
            }
        };
        let copy = |out: &mut [u8]| -> Option<()> {
            out.get_mut(..len)?.copy_from_slice(base);
            Some(())
        };
        match kind {
            Kind::TruncateRandom => {
                let cut = if r.below(2) == 0 {
                    r.below(self.header_end.saturating_add(64).min(len))
                } else {
                    r.below(len)
                };
                out.get_mut(..cut)?.copy_from_slice(&base[..cut]);
                Some((kind, cut))
            }
            Kind::BitFlip => {
                copy(out)?;
                for _ in 0..1 + r.below(4) {
                    let p = pos(&mut r);
                    out[p] ^= 1 << r.below(8);
                }
                Some((kind, len))
            }
            Kind::ByteOverwrite => {
                copy(out)?;
                let p = pos(&mut r);
                out[p] = r.pick(&[
                    0x00, 0x01, 0x7f, 0x80, 0xfe, 0xff, b'"', b'\\', b'{', b'}', b'[', b']', b',',
                    b':', b'-', b'0', b'9', b' ', b'\n', b'=', b'#',
                ]);
                Some((kind, len))
            }
            Kind::WordOverwrite => {
                copy(out)?;
                let v: u64 = r.pick(&[
                    0,
                    1,
                    0x7f,
                    0x80,
                    0xff,
                    0x7fff_ffff,
                    0x8000_0000,
                    0xffff_ffff,
                    0x1_0000_0000,
                    0x7fff_ffff_ffff_ffff,
                    u64::MAX,
                ]);
                let w = if r.below(2) == 0 { 4 } else { 8 };
                let p = pos(&mut r).min(len.saturating_sub(w));
                let end = (p + w).min(len);
                out[p..end].copy_from_slice(&v.to_le_bytes()[..end - p]);
                Some((kind, len))
            }
            Kind::HeaderLen => {
                copy(out)?;
                let n = self.header_end.saturating_sub(8) as u64;
                let l = len as u64;
                let v = r.pick(&[
                    0,
                    1,
                    2,
                    7,
                    8,
                    n.wrapping_sub(1),
                    n + 1,
                    n + 8,
                    l.wrapping_sub(8),
                    l.wrapping_sub(7),
                    l,
                    u32::MAX as u64,
                    (1 << 32) | n,
                    n << 8,
                    100_000_001,
                    i64::MAX as u64,
                    u64::MAX - 7,
                    u64::MAX,
                ]);
                if len >= 8 {
                    out[..8].copy_from_slice(&v.to_le_bytes());
                }
                Some((kind, len))
            }
            Kind::NumberEdit => {
                // The n-th number (a run of digits, with a leading `-`) in the JSON header.
                let header = 8.min(self.header_end)..self.header_end;
                let numbers = spans(&base[header.clone()], |c| c.is_ascii_digit() || c == b'-');
                if numbers == 0 {
                    copy(out)?;
                    return Some((kind, len));
                }
                let (s, e) = nth_span(&base[header.clone()], r.below(numbers), |c| {
                    c.is_ascii_digit() || c == b'-'
                });
                let new: &[u8] = r.pick(&[
                    b"0".as_slice(),
                    b"-1",
                    b"-2147483648",
                    b"2147483647",
                    b"2147483648",
                    b"4294967295",
                    b"4294967296",
                    b"65536",
                    b"18446744073709551615",
                    b"18446744073709551616",
                    b"999999999999999999999999999999",
                    b"-9223372036854775808",
                    b"1e39",
                    b"nan",
                    b"-0",
                    b"",
                ]);
                let (s, e) = (header.start + s, header.start + e);
                splice(base, self.header_end, (s, e), new, out).map(|l| (kind, l))
            }
            Kind::LineDelete | Kind::LineDuplicate | Kind::LineSwap => {
                let Some((gs, ge)) = self.graph else {
                    copy(out)?;
                    return Some((kind, len));
                };
                let lines = graph_lines(&base[gs..ge]);
                let a = line_span(&base[gs..ge], r.below(lines));
                let (a0, a1) = (gs + a.0, gs + a.1);
                let l = match kind {
                    Kind::LineDelete => splice(base, self.header_end, (a0, a1), b"", out)?,
                    Kind::LineDuplicate => {
                        // Insert a copy of the line (with its `\n` escape) right after it.
                        splice(base, self.header_end, (a1, a1), &base[a0..a1], out)?
                    }
                    _ => {
                        let b = line_span(&base[gs..ge], r.below(lines));
                        let (b0, b1) = (gs + b.0, gs + b.1);
                        let ((x0, x1), (y0, y1)) = if a0 <= b0 {
                            ((a0, a1), (b0, b1))
                        } else {
                            ((b0, b1), (a0, a1))
                        };
                        if x1 > y0 {
                            copy(out)?; // the same line twice: nothing to swap
                            len
                        } else {
                            // x, between, y -> y, between, x (same total length).
                            let mut w = 0;
                            for part in [
                                &base[..x0],
                                &base[y0..y1],
                                &base[x1..y0],
                                &base[x0..x1],
                                &base[y1..],
                            ] {
                                out.get_mut(w..w + part.len())?.copy_from_slice(part);
                                w += part.len();
                            }
                            w
                        }
                    }
                };
                Some((kind, l))
            }
            Kind::TruncateBoundary => None,
        }
    }
}

/// `base` with `base[s..e]` (inside the JSON header ending at `header_end`) replaced by `new`,
/// written to `out` with the header-length field rewritten for the new header length.
fn splice(
    base: &[u8],
    header_end: usize,
    (s, e): (usize, usize),
    new: &[u8],
    out: &mut [u8],
) -> Option<usize> {
    let total = base.len() - (e - s) + new.len();
    let out = out.get_mut(..total)?;
    out[..s].copy_from_slice(&base[..s]);
    out[s..s + new.len()].copy_from_slice(new);
    out[s + new.len()..].copy_from_slice(&base[e..]);
    if header_end >= 8 {
        let n = (header_end - 8 - (e - s) + new.len()) as u64;
        out[..8].copy_from_slice(&n.to_le_bytes());
    }
    Some(total)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A decimal number at the start of `b` (saturating) and its length in bytes.
fn parse_uint(b: &[u8]) -> (usize, usize) {
    let mut v = 0usize;
    let mut i = 0;
    while i < b.len() && b[i].is_ascii_digit() {
        v = v.saturating_mul(10).saturating_add((b[i] - b'0') as usize);
        i += 1;
    }
    (v, i)
}

/// Number of maximal runs of bytes matching `f`.
fn spans(b: &[u8], f: impl Fn(u8) -> bool) -> usize {
    let mut n = 0;
    let mut inside = false;
    for &c in b {
        let m = f(c);
        if m && !inside {
            n += 1;
        }
        inside = m;
    }
    n
}

/// The `k`-th maximal run of bytes matching `f`, as `[start, end)` (`k < spans(b, f)`).
fn nth_span(b: &[u8], k: usize, f: impl Fn(u8) -> bool) -> (usize, usize) {
    let mut n = 0;
    let mut i = 0;
    while i < b.len() {
        if f(b[i]) {
            let s = i;
            while i < b.len() && f(b[i]) {
                i += 1;
            }
            if n == k {
                return (s, i);
            }
            n += 1;
        } else {
            i += 1;
        }
    }
    (b.len(), b.len())
}

/// Lines of JSON-escaped graph text (separated by the two bytes `\n`).
fn graph_lines(g: &[u8]) -> usize {
    1 + g.windows(2).filter(|w| w == b"\\n").count()
}

/// The `k`-th line of escaped graph text including its trailing `\n` escape (if any).
fn line_span(g: &[u8], k: usize) -> (usize, usize) {
    let mut start = 0;
    let mut line = 0;
    let mut i = 0;
    while i + 1 < g.len() {
        if &g[i..i + 2] == b"\\n" {
            if line == k {
                return (start, i + 2);
            }
            line += 1;
            start = i + 2;
            i += 2;
        } else {
            i += 1;
        }
    }
    (start, g.len())
}

/// What one case did through the C API: the status of each call made (`None`: not called).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Outcome {
    pub load: Option<RtStatus>,
    pub info: Option<RtStatus>,
    pub run_u8: Option<RtStatus>,
    pub run_i8: Option<RtStatus>,
    pub landmarks: Option<RtStatus>,
    pub release: Option<RtStatus>,
    /// `arena_bytes` of a loaded model.
    pub arena_bytes: usize,
}

impl Outcome {
    /// Loaded and ran one inference to the end.
    pub fn ran(&self) -> bool {
        self.run_u8 == Some(RtStatus::Ok)
    }

    /// Every status is one the C API documents for that call on this kind of input (a model
    /// refused, or a model whose needs exceed the buffers), and none is `Internal`.
    pub fn documented(&self) -> bool {
        use RtStatus::*;
        let ok_load = matches!(
            self.load,
            Some(Ok | ModelContainer | ModelNoGraph | ModelGraph)
        );
        let ok_run = |s: Option<RtStatus>| {
            matches!(
                s,
                None | Some(Ok | ArenaTooSmall | InputLength | OutputLength | WrongDtype)
            )
        };
        ok_load
            && matches!(self.info, None | Some(Ok))
            && ok_run(self.run_u8)
            && ok_run(self.run_i8)
            && matches!(self.landmarks, None | Some(Ok | OutputLength))
            && self.release == Some(Ok)
    }
}

/// Pushes `bytes` through the C API as firmware would. `arena`, `image`, `input` and `out` are
/// the caller's buffers (static on the device): each run gets exactly the model's size of each
/// when it fits, else the whole buffer (then the call must return a code saying so).
pub fn run_case(
    bytes: &[u8],
    arena: &mut [u8],
    image: &[u8],
    input: &[i8],
    out: &mut [f32],
) -> Outcome {
    let mut o = Outcome::default();
    let mut m = RtModel::default();
    // SAFETY (every call): each pointer is to a live buffer of the length passed, the handle is
    // ours and used by this thread only, and `bytes` outlives the handle (released below).
    unsafe {
        let st = rt_model_load(&mut m, bytes.as_ptr(), bytes.len());
        o.load = Some(st);
        if st == RtStatus::Ok {
            let mut info = core::mem::MaybeUninit::<RtModelInfo>::zeroed();
            let st = rt_model_get_info(&m, info.as_mut_ptr());
            o.info = Some(st);
            if st == RtStatus::Ok {
                // SAFETY: zeroed is a valid RtModelInfo (enums 0 = Int8/Features), and
                // `rt_model_get_info` wrote it.
                let info = info.assume_init();
                o.arena_bytes = info.arena_bytes;
                let fit = |want: usize, have: usize| want.min(have);
                let a = fit(info.arena_bytes, arena.len());
                let n_out = fit(info.output_len, out.len());
                let img = &image[..fit(info.input_len, image.len())];
                let st = rt_run_u8(
                    &m,
                    img.as_ptr(),
                    img.len(),
                    arena.as_mut_ptr(),
                    a,
                    out.as_mut_ptr(),
                    n_out,
                );
                o.run_u8 = Some(st);
                if info.dtype == RtDtype::Int8 {
                    let x = &input[..fit(info.input_len, input.len())];
                    o.run_i8 = Some(rt_run_i8(
                        &m,
                        x.as_ptr(),
                        x.len(),
                        arena.as_mut_ptr(),
                        a,
                        out.as_mut_ptr(),
                        n_out,
                    ));
                }
                if info.task == RtTask::Landmarks {
                    let mut pts = [RtPoint::default(); RT_LANDMARKS];
                    o.landmarks = Some(rt_landmarks(
                        &m,
                        out.as_ptr(),
                        n_out,
                        pts.as_mut_ptr(),
                        pts.len(),
                    ));
                }
            }
        }
        o.release = Some(rt_model_release(&mut m));
    }
    o
}

/// Random cases per model on the device, after its boundary truncations (the QEMU run's size).
pub const DEVICE_RANDOM_CASES: usize = 400;
/// The device's image and int8 input buffers (the largest embedded input is 32×32×3).
pub const DEVICE_IMAGE_BYTES: usize = 32 * 32 * 3;
/// The device's output buffer, in floats (the largest embedded output is 64 features).
pub const DEVICE_OUT_FLOATS: usize = 64;
/// Number of status codes, the length of each [`Counts`] histogram.
pub const N_STATUS: usize = runtime_ffi::RT_STATUS_COUNT as usize;

/// The seed of a model's random cases, from its name (FNV-1a), so that the device and the host
/// make the same cases whatever else the build embeds.
pub fn seed(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The image and int8 input every run gets (any pixels do: the point is the model bytes).
pub fn fill_inputs(image: &mut [u8], input: &mut [i8]) {
    for (i, p) in image.iter_mut().enumerate() {
        *p = (i * 37 % 251) as u8;
    }
    for (x, &p) in input.iter_mut().zip(image.iter()) {
        *x = p as i8;
    }
}

/// The case [`run_model`] is on, for a fault handler's report (the firmware's HardFault and
/// panic handlers print it, so a fault names the case the host can rerun).
pub static CURRENT_CASE: AtomicUsize = AtomicUsize::new(0);

/// Status histograms of one model's cases: `load[c]` is the number of cases whose
/// `rt_model_load` returned code `c`, and so on; `ran + errors == cases` (every case either ran
/// one inference to the end or got an error code somewhere).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Counts {
    pub cases: u32,
    pub errors: u32,
    pub ran: u32,
    pub undocumented: u32,
    pub load: [u32; N_STATUS],
    pub run_u8: [u32; N_STATUS],
    pub run_i8: [u32; N_STATUS],
    pub landmarks: [u32; N_STATUS],
}

impl Counts {
    pub fn add(&mut self, o: &Outcome) {
        self.cases += 1;
        if o.ran() {
            self.ran += 1;
        } else {
            self.errors += 1;
        }
        self.undocumented += !o.documented() as u32;
        for (h, s) in [
            (&mut self.load, o.load),
            (&mut self.run_u8, o.run_u8),
            (&mut self.run_i8, o.run_i8),
            (&mut self.landmarks, o.landmarks),
        ] {
            if let Some(s) = s {
                h[s as usize] += 1;
            }
        }
    }
}

/// Every case of one model (boundary truncations, then `random` seeded mutations) made in
/// `case_buf` and run through [`run_case`] with the caller's buffers. `None` if a case does not
/// fit `case_buf` (it must hold the model plus [`MAX_GROWTH`]).
#[allow(clippy::too_many_arguments)]
pub fn run_model(
    name: &str,
    base: &[u8],
    random: usize,
    case_buf: &mut [u8],
    arena: &mut [u8],
    image: &[u8],
    input: &[i8],
    out: &mut [f32],
) -> Option<Counts> {
    let m = Mutator::new(base, seed(name));
    let mut c = Counts::default();
    for k in 0..m.boundaries() + random {
        CURRENT_CASE.store(k, Ordering::Relaxed);
        let (_, len) = m.case(k, case_buf)?;
        let o = run_case(&case_buf[..len], arena, image, input, out);
        c.add(&o);
    }
    Some(c)
}
