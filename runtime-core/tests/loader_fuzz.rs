//! Parity item 4: arbitrary and mutated model bytes never panic the loader, and any model the
//! loader accepts runs to completion in an arena of `arena_bytes()`. Case counts default to
//! 10,000 per property; set `PROPTEST_CASES` higher for a fuzz run.

mod common;

use proptest::prelude::*;
use runtime_core::{write_safetensors, Dtype, Model, RawTensor};

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

/// Loads; if accepted, runs on a zero input. Must never panic; must not fail to run.
fn load_and_run(bytes: &[u8]) {
    if let Ok(m) = Model::parse(bytes) {
        let mut arena = vec![0u8; m.arena_bytes()];
        let mut out = vec![0f32; m.output_len()];
        match m.dtype() {
            Dtype::Int8 => m
                .run_int8(&vec![0i8; m.input_len()], &mut arena, &mut out)
                .unwrap(),
            Dtype::F32 => m
                .run_f32(&vec![0f32; m.input_len()], &mut arena, &mut out)
                .unwrap(),
        }
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    Set(usize, u8),
    Truncate(usize),
    Insert(usize, u8),
    FlipBit(usize, u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        4 => (any::<usize>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
    ]
}

fn apply(bytes: &mut Vec<u8>, muts: &[Mutation], focus: usize) {
    for m in muts {
        // Most mutations hit the header (first `focus` bytes), where the structure lives.
        let n = bytes.len().max(1);
        let pick = |i: usize| {
            if !i.is_multiple_of(4) {
                i % focus.min(n)
            } else {
                i % n
            }
        };
        match *m {
            Mutation::Set(i, b) => {
                let i = pick(i);
                if let Some(x) = bytes.get_mut(i) {
                    *x = b;
                }
            }
            Mutation::Truncate(i) => bytes.truncate(i % n),
            Mutation::Insert(i, b) => bytes.insert(pick(i).min(bytes.len()), b),
            Mutation::FlipBit(i, b) => {
                let i = pick(i);
                if let Some(x) = bytes.get_mut(i) {
                    *x ^= 1 << b;
                }
            }
        }
    }
}

/// Graph-text mutations: replace a token's value, drop/duplicate/swap lines.
#[derive(Debug, Clone)]
enum TextMut {
    Value(usize, i64),
    Drop(usize),
    Dup(usize),
    Swap(usize, usize),
    Token(usize, &'static str),
}

fn text_mut() -> impl Strategy<Value = TextMut> {
    let values = prop_oneof![
        Just(0i64),
        Just(-1),
        Just(-129),
        Just(128),
        Just(1 << 31),
        Just(i64::MAX),
        -3i64..40
    ];
    let toks = prop_oneof![
        Just("relu"),
        Just("conv"),
        Just("k=0"),
        Just("pad=9"),
        Just("stride=0"),
        Just("shape=0,1,1"),
        Just("zp=200"),
        Just("s=31"),
        Just("m=-5"),
        Just("rtgraph"),
        Just("in=999"),
        Just("scale=nan"),
        Just("w=c1.bias"),
        Just("beta=0"),
        Just("softmax"),
        Just("avgpool")
    ];
    prop_oneof![
        5 => (any::<usize>(), values).prop_map(|(i, v)| TextMut::Value(i, v)),
        1 => any::<usize>().prop_map(TextMut::Drop),
        1 => any::<usize>().prop_map(TextMut::Dup),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| TextMut::Swap(a, b)),
        2 => (any::<usize>(), toks).prop_map(|(i, t)| TextMut::Token(i, t)),
    ]
}

fn mutate_text(text: &str, muts: &[TextMut]) -> String {
    let mut lines: Vec<Vec<String>> = text
        .lines()
        .map(|l| l.split(' ').map(String::from).collect())
        .collect();
    for m in muts {
        let n = lines.len().max(1);
        match m {
            TextMut::Value(i, v) => {
                let li = i % n;
                if let Some(line) = lines.get_mut(li) {
                    let ti = (i / n) % line.len().max(1);
                    if let Some(tok) = line.get_mut(ti) {
                        *tok = match tok.split_once('=') {
                            Some((k, _)) => format!("{k}={v}"),
                            None => v.to_string(),
                        };
                    }
                }
            }
            TextMut::Drop(i) => {
                if !lines.is_empty() {
                    lines.remove(i % n);
                }
            }
            TextMut::Dup(i) => {
                if let Some(l) = lines.get(i % n).cloned() {
                    lines.insert(i % n, l);
                }
            }
            TextMut::Swap(a, b) => lines.swap(a % n, b % n),
            TextMut::Token(i, t) => {
                if let Some(line) = lines.get_mut(i % n) {
                    line.push(t.to_string());
                }
            }
        }
    }
    lines
        .iter()
        .map(|l| l.join(" "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The model mutated: [`common::tiny`] (every op but the classifier's), or with `classifier`
/// [`common::tiny_classifier`] (average pools, softmax).
fn base(dtype: Dtype, classifier: bool) -> (Vec<u8>, String, Vec<RawTensor>) {
    let b = if classifier {
        common::tiny_classifier(dtype, 7)
    } else {
        common::tiny(dtype, 7)
    };
    (
        b.to_bytes().unwrap(),
        b.graph_text().unwrap(),
        b.params().to_vec(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        load_and_run(&bytes);
    }

    #[test]
    fn arbitrary_header_never_panics(json in "\\{[ -~]{0,200}\\}", tail in proptest::collection::vec(any::<u8>(), 0..64)) {
        let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(json.as_bytes());
        bytes.extend_from_slice(&tail);
        load_and_run(&bytes);
    }

    #[test]
    fn mutated_model_bytes_never_panic(int8 in any::<bool>(), classifier in any::<bool>(), muts in proptest::collection::vec(mutation(), 1..6)) {
        let (mut bytes, _, _) = base(if int8 { Dtype::Int8 } else { Dtype::F32 }, classifier);
        let header = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        apply(&mut bytes, &muts, header);
        load_and_run(&bytes);
    }

    #[test]
    fn mutated_graph_text_never_panics(int8 in any::<bool>(), classifier in any::<bool>(), muts in proptest::collection::vec(text_mut(), 1..4)) {
        let (_, text, params) = base(if int8 { Dtype::Int8 } else { Dtype::F32 }, classifier);
        let bytes = write_safetensors(&mutate_text(&text, &muts), &params).unwrap();
        load_and_run(&bytes);
    }
}
