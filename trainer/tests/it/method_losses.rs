//! The MoCo / Exemplar loss (paper eq. 2) against hand computations and an independent naive
//! implementation written here, plus its gradient against finite differences.
use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use trainer::method::contrastive::contrastive_loss;
use trainer::method::queue::LabelQueue;

/// A queue holding known keys and labels (−1 allowed), built through the checkpoint path.
fn queue_with(rows: &[[f32; 2]], labels: &[i64]) -> LabelQueue {
    let dev = Device::Cpu;
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    let mut st = std::collections::HashMap::new();
    st.insert(
        "queue".to_string(),
        Tensor::from_vec(flat, (rows.len(), 2), &dev).unwrap(),
    );
    st.insert(
        "queue_labels".to_string(),
        Tensor::new(labels, &dev).unwrap(),
    );
    st.insert("queue_ptr".to_string(), Tensor::new(&[0i64], &dev).unwrap());
    LabelQueue::from_tensors(&st, &dev).unwrap()
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

/// 2 queries, 4 queue slots, τ = 0.5, unit vectors so normalisation is a no-op.
/// q1 = (1,0), k1 = (0.6,0.8): l_pos = 0.6; queue·q1 = (1, 0, −1, 0.6)
/// q2 = (0,1), k2 = (0.28,0.96): l_pos = 0.96; queue·q2 = (0, 1, 0, −0.8)
/// queue labels (3, 5, −1, 3); query labels (3, 5).
#[test]
fn two_query_four_slot_example_by_hand() {
    let dev = Device::Cpu;
    let q = Tensor::new(&[[1f32, 0.0], [0.0, 1.0]], &dev).unwrap();
    let k = Tensor::new(&[[0.6f32, 0.8], [0.28, 0.96]], &dev).unwrap();
    let rows = [[1f32, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.6, -0.8]];
    let queue = queue_with(&rows, &[3, 5, -1, 3]);
    let tau = 0.5;
    let e = |x: f64| (x / tau).exp();

    // MoCo: every queue slot is a negative.
    let moco1 = -(e(0.6) / (e(0.6) + e(1.0) + e(0.0) + e(-1.0) + e(0.6))).ln();
    let moco2 = -(e(0.96) / (e(0.96) + e(0.0) + e(1.0) + e(0.0) + e(-0.8))).ln();
    let out = contrastive_loss(&q, &k, &queue, None, tau).unwrap();
    assert!(
        (scalar(&out.loss) - (moco1 + moco2) / 2.0).abs() < 1e-5,
        "{} vs {}",
        scalar(&out.loss),
        (moco1 + moco2) / 2.0
    );

    // Exemplar: q1 (label 3) drops slots 0 and 3; q2 (label 5) drops slot 1; slot 2 (−1) stays.
    let ex1 = -(e(0.6) / (e(0.6) + e(0.0) + e(-1.0))).ln();
    let ex2 = -(e(0.96) / (e(0.96) + e(0.0) + e(0.0) + e(-0.8))).ln();
    let out = contrastive_loss(&q, &k, &queue, Some(&[3, 5]), tau).unwrap();
    assert!((scalar(&out.loss) - (ex1 + ex2) / 2.0).abs() < 1e-5);
    // Instance accuracy: under MoCo q1's positive 0.6 < slot 0's 1.0 and q2's 0.96 < slot 1's
    // 1.0, so both are wrong; Exemplar masks exactly those slots, so both are right.
    assert_eq!(out.instance_accuracy().unwrap(), 1.0);
    assert_eq!(
        contrastive_loss(&q, &k, &queue, None, tau)
            .unwrap()
            .instance_accuracy()
            .unwrap(),
        0.0
    );
}

#[test]
fn masking_removes_exactly_the_same_label_slots() {
    let dev = Device::Cpu;
    let rows = [[1f32, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.6, -0.8]];
    let queue = queue_with(&rows, &[3, 5, 3, 7]);
    let q = Tensor::new(&[[1f32, 0.0], [0.0, 1.0]], &dev).unwrap();
    let out = contrastive_loss(&q, &q, &queue, Some(&[3, 7]), 0.1).unwrap();
    let logits = out.logits.to_vec2::<f32>().unwrap();
    let masked: Vec<Vec<bool>> = logits
        .iter()
        .map(|r| r.iter().map(|x| *x == f32::NEG_INFINITY).collect())
        .collect();
    assert_eq!(
        masked,
        vec![
            vec![false, true, false, true, false],
            vec![false, false, false, false, true]
        ]
    );
}

/// Naive eq. 2 in f64 loops, independent of the tensor code.
fn naive_loss(
    q: &[Vec<f64>],
    k: &[Vec<f64>],
    queue: &[Vec<f64>],
    ql: &[i64],
    yl: Option<&[i64]>,
    tau: f64,
) -> f64 {
    let norm = |v: &Vec<f64>| {
        let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        v.iter().map(|x| x / n).collect::<Vec<_>>()
    };
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let mut total = 0.0;
    for i in 0..q.len() {
        let (qi, ki) = (norm(&q[i]), norm(&k[i]));
        let pos = (dot(&qi, &ki) / tau).exp();
        let mut denom = pos;
        for (j, kj) in queue.iter().enumerate() {
            let keep = match yl {
                None => true,
                Some(y) => ql[j] == -1 || ql[j] != y[i],
            };
            if keep {
                denom += (dot(&qi, kj) / tau).exp();
            }
        }
        total += -(pos / denom).ln();
    }
    total / q.len() as f64
}

/// Row-major f64 matrix used by the naive reference.
type Mat = Vec<Vec<f64>>;

fn random_case(seed: u64, b: usize, kq: usize, d: usize) -> (Mat, Mat, LabelQueue, Vec<i64>) {
    let dev = Device::Cpu;
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut mat = |n: usize| {
        (0..n)
            .map(|_| (0..d).map(|_| r.gen_range(-1.0..1.0)).collect())
            .collect::<Vec<Vec<f64>>>()
    };
    let (q, k) = (mat(b), mat(b));
    let mut queue = LabelQueue::new(kq, d, seed, &dev).unwrap();
    // Fill half the queue with labelled keys; the rest stays −1.
    let fill: Vec<Vec<f64>> = mat(kq / 2);
    let flat: Vec<f32> = fill.iter().flatten().map(|&x| x as f32).collect();
    let labels: Vec<i64> = (0..kq / 2).map(|j| (j % 3) as i64).collect();
    let t = Tensor::from_vec(flat, (kq / 2, d), &dev).unwrap();
    queue.enqueue(&t, Some(&labels)).unwrap();
    (q, k, queue, labels)
}

fn to_t(m: &[Vec<f64>], dtype: DType) -> Tensor {
    let (b, d) = (m.len(), m[0].len());
    Tensor::from_vec(
        m.iter().flatten().copied().collect::<Vec<f64>>(),
        (b, d),
        &Device::Cpu,
    )
    .unwrap()
    .to_dtype(dtype)
    .unwrap()
}

#[test]
fn exemplar_matches_naive_eq2_and_minus_one_slots_are_kept() {
    let (q, k, queue, _) = random_case(11, 4, 16, 5);
    let queue_rows: Vec<Vec<f64>> = queue
        .keys()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec2()
        .unwrap();
    let ql = queue.labels().to_vec();
    assert!(
        ql.contains(&-1) && ql.contains(&0),
        "the case has both labelled and unlabelled slots"
    );
    let y = [0i64, 1, 2, 4];
    for tau in [0.07, 0.2] {
        let got = scalar(
            &contrastive_loss(
                &to_t(&q, DType::F32),
                &to_t(&k, DType::F32),
                &queue,
                Some(&y),
                tau,
            )
            .unwrap()
            .loss,
        );
        let want = naive_loss(&q, &k, &queue_rows, &ql, Some(&y), tau);
        assert!(
            (got - want).abs() < 1e-4 * want.max(1.0),
            "τ {tau}: {got} vs {want}"
        );
        let got = scalar(
            &contrastive_loss(
                &to_t(&q, DType::F32),
                &to_t(&k, DType::F32),
                &queue,
                None,
                tau,
            )
            .unwrap()
            .loss,
        );
        let want_moco = naive_loss(&q, &k, &queue_rows, &ql, None, tau);
        assert!((got - want_moco).abs() < 1e-4 * want_moco.max(1.0));
        assert!(
            want_moco > naive_loss(&q, &k, &queue_rows, &ql, Some(&y), tau),
            "masking shrinks the denominator"
        );
    }
}

#[test]
fn exemplar_equals_moco_when_all_labels_differ() {
    let (q, k, queue, _) = random_case(3, 4, 16, 6);
    let (q, k) = (to_t(&q, DType::F32), to_t(&k, DType::F32));
    let moco = contrastive_loss(&q, &k, &queue, None, 0.1).unwrap();
    // Queue labels are 0..=2 and −1; these query labels match none of them.
    let ex = contrastive_loss(&q, &k, &queue, Some(&[10, 11, 12, 13]), 0.1).unwrap();
    assert_eq!(scalar(&moco.loss).to_bits(), scalar(&ex.loss).to_bits());
    // A fresh queue (all −1) never masks anything either, whatever the query labels.
    let fresh = LabelQueue::new(16, 6, 1, &Device::Cpu).unwrap();
    let a = contrastive_loss(&q, &k, &fresh, None, 0.1).unwrap();
    let b = contrastive_loss(&q, &k, &fresh, Some(&[0, 0, 1, 1]), 0.1).unwrap();
    assert_eq!(scalar(&a.loss).to_bits(), scalar(&b.loss).to_bits());
    // Query labels are ≥ 0 by definition: −1 is refused rather than matched against −1 slots.
    assert!(contrastive_loss(&q, &k, &fresh, Some(&[0, -1, 1, 1]), 0.1)
        .unwrap_err()
        .to_string()
        .contains("< 0"));
}

#[test]
fn gradient_wrt_q_matches_finite_differences() {
    let (q, k, queue, _) = random_case(5, 3, 8, 4);
    let y = [0i64, 1, 3];
    let kt = to_t(&k, DType::F64);
    let qv = Var::from_tensor(&to_t(&q, DType::F64)).unwrap();
    let out = contrastive_loss(qv.as_tensor(), &kt, &queue, Some(&y), 0.2).unwrap();
    let grads = out.loss.backward().unwrap();
    let g: Vec<Vec<f64>> = grads.get(qv.as_tensor()).unwrap().to_vec2().unwrap();
    assert!(grads.get(&kt).is_none(), "no gradient flows into the keys");
    let loss_at = |qm: &Vec<Vec<f64>>| {
        scalar(
            &contrastive_loss(&to_t(qm, DType::F64), &kt, &queue, Some(&y), 0.2)
                .unwrap()
                .loss,
        )
    };
    let h = 1e-6;
    for i in 0..q.len() {
        for j in 0..q[0].len() {
            let (mut p, mut m) = (q.clone(), q.clone());
            p[i][j] += h;
            m[i][j] -= h;
            let fd = (loss_at(&p) - loss_at(&m)) / (2.0 * h);
            assert!(
                (fd - g[i][j]).abs() < 1e-6,
                "d/dq[{i}][{j}]: autograd {} vs fd {fd}",
                g[i][j]
            );
        }
    }
}

#[test]
fn shape_and_temperature_errors_are_clear() {
    let dev = Device::Cpu;
    let queue = LabelQueue::new(4, 2, 0, &dev).unwrap();
    let q = Tensor::zeros((2, 2), DType::F32, &dev).unwrap();
    let k3 = Tensor::zeros((2, 3), DType::F32, &dev).unwrap();
    assert!(contrastive_loss(&q, &k3, &queue, None, 0.1).is_err());
    assert!(contrastive_loss(&q, &q, &queue, None, 0.0)
        .unwrap_err()
        .to_string()
        .contains("τ"));
    assert!(contrastive_loss(&q, &q, &queue, Some(&[1]), 0.1)
        .unwrap_err()
        .to_string()
        .contains("1 query labels"));
    let q3 = Tensor::zeros((2, 3), DType::F32, &dev).unwrap();
    assert!(contrastive_loss(&q3, &q3, &queue, None, 0.1)
        .unwrap_err()
        .to_string()
        .contains("dim 3"));
}
