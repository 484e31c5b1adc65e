//! The study's tables: collected from the step records, written as `results.json` (everything,
//! machine-readable) and `results.md` (the paper's Tables 4, 5 and 1, and the orderings).
//!
//! The "orderings" are computed: for each of the paper's claims "A beats B", the margin A−B (in
//! the direction the paper claims) is compared with the combined 95% interval
//! √(ci_A² + ci_B²) of the two figures.
mod claims;
mod collect;
mod markdown;
mod schema;

pub use claims::*;
pub use collect::*;
pub use markdown::*;
pub use schema::*;

#[cfg(test)]
mod tests {
    use super::super::ids;
    use super::*;

    fn f(v: f64, c: f64) -> Option<Figure> {
        Some(Figure {
            value: v,
            ci95: Some(c),
        })
    }

    fn row(m: &str, base: f64, one: f64, five: f64, iod: f64) -> MethodRow {
        MethodRow {
            method: m.parse().unwrap(),
            base: f(base, 1.0),
            fewshot: vec![
                ShotCell {
                    shot: 1,
                    host: f(one, 0.8),
                    runtime_int8: f(one - 0.1, 0.8),
                },
                ShotCell {
                    shot: 5,
                    host: f(five, 0.6),
                    runtime_int8: None,
                },
            ],
            iod_host: f(iod, 0.3),
            iod_runtime_int8: None,
        }
    }

    #[test]
    fn verdicts_compare_margin_with_interval() {
        assert_eq!(verdict(2.0, 1.0), Verdict::Holds);
        assert_eq!(verdict(0.5, 1.0), Verdict::HoldsWithinNoise);
        assert_eq!(verdict(-0.5, 1.0), Verdict::ReversedWithinNoise);
        assert_eq!(verdict(-1.5, 1.0), Verdict::Reversed);
        assert_eq!(verdict(0.0, 0.0), Verdict::Tie);
    }

    #[test]
    fn claims_combine_intervals_and_respect_direction() {
        // Higher is better: 50 ± 3 vs 46 ± 4 → margin 4, interval 5 → within the noise.
        let c = claim(
            "a > b".into(),
            "-".into(),
            f(50.0, 3.0),
            f(46.0, 4.0),
            false,
        );
        assert_eq!(c.margin, Some(4.0));
        assert!((c.ci95.unwrap() - 5.0).abs() < 1e-12);
        assert_eq!(c.verdict, Verdict::HoldsWithinNoise);
        // Lower is better: 5 vs 9 with tiny intervals → holds.
        let c = claim("a < b".into(), "-".into(), f(5.0, 0.1), f(9.0, 0.1), true);
        assert_eq!(c.margin, Some(4.0));
        assert_eq!(c.verdict, Verdict::Holds);
        let c = claim("x".into(), "-".into(), None, f(1.0, 0.1), true);
        assert_eq!(c.verdict, Verdict::Missing);
    }

    #[test]
    fn orderings_on_hand_made_numbers() {
        let rows = vec![
            row("supervised", 80.0, 50.0, 70.0, 8.0),
            row("moco-v2", 70.0, 49.5, 65.0, 6.0),
            row("exemplar-v2", 75.0, 55.0, 60.0, 6.1),
            row("scratch", 30.0, 30.0, 40.0, 20.0),
        ];
        let o = orderings(&rows, None, &[], &[1, 5]);
        let get = |t: &str| {
            o.iter()
                .find(|c| c.claim == t)
                .unwrap_or_else(|| panic!("{t} missing"))
        };
        // base: 80 − 70 = 10 vs √2 → holds.
        assert_eq!(
            get("base classes: supervised > moco-v2").verdict,
            Verdict::Holds
        );
        // novel 1-shot: supervised 50 vs moco 49.5, interval √(0.64+0.64) ≈ 1.13 → within noise.
        assert_eq!(
            get("novel 1-shot: supervised > moco-v2").verdict,
            Verdict::HoldsWithinNoise
        );
        // novel 5-shot: exemplar 60 vs supervised 70 → reversed beyond √0.72.
        assert_eq!(
            get("novel 5-shot: exemplar-v2 > supervised").verdict,
            Verdict::Reversed
        );
        // landmarks (lower is better): moco 6.0 vs supervised 8.0 → holds; margin +2.
        let c = get("landmark error: moco-v2 < supervised");
        assert_eq!(c.verdict, Verdict::Holds);
        assert!((c.margin.unwrap() - 2.0).abs() < 1e-12);
        assert_eq!(c.paper, "5.89 vs 6.39");
        // 3 base + 2 × 3 novel + 5 landmark claims + 4 "beats the mean face" (not measured
        // here: no baseline given), no ablation.
        assert_eq!(o.len(), 3 + 6 + 5 + 4);
        assert_eq!(
            get("landmark error: scratch < mean face (beats the mean face)").verdict,
            Verdict::Missing
        );
    }

    /// Each method against the no-image baseline (lower is better): supervised 8.0 ± 0.3 vs
    /// 10.0 ± 0.4 → margin 2, interval 0.5 → holds; scratch 20.0 vs 10.0 → margin −10, reversed;
    /// a method without a landmark figure is "not measured".
    #[test]
    fn methods_are_checked_against_the_mean_face() {
        let mut none = row("moco-v2", 70.0, 49.5, 65.0, 0.0);
        none.iod_host = None;
        let rows = vec![
            row("supervised", 80.0, 50.0, 70.0, 8.0),
            row("scratch", 30.0, 30.0, 40.0, 20.0),
            none,
        ];
        let o = orderings(&rows, f(10.0, 0.4), &[], &[1]);
        let get = |m: &str| {
            o.iter()
                .find(|c| {
                    c.claim == format!("landmark error: {m} < mean face (beats the mean face)")
                })
                .unwrap_or_else(|| panic!("{m} missing"))
        };
        let s = get("supervised");
        assert!((s.margin.unwrap() - 2.0).abs() < 1e-12);
        assert!((s.ci95.unwrap() - 0.5).abs() < 1e-12);
        assert_eq!(s.verdict, Verdict::Holds);
        assert_eq!(s.paper, "-");
        let sc = get("scratch");
        assert!((sc.margin.unwrap() + 10.0).abs() < 1e-12);
        assert_eq!(sc.verdict, Verdict::Reversed);
        assert_eq!(get("moco-v2").verdict, Verdict::Missing);
    }

    #[test]
    fn a_mistyped_record_field_is_an_error_naming_the_record() {
        let dir = tempfile::tempdir().unwrap();
        let plan = super::super::Plan::new(super::super::preset::tiny()).unwrap();
        let id = ids::fewshot("moco-v2");
        super::super::records::write_record(
            dir.path(),
            &super::super::StepRecord {
                id: id.clone(),
                title: "t".into(),
                seconds: 1.0,
                result: serde_json::json!({"results": [{"shot": 1, "accuracy": "high"}]}),
            },
        )
        .unwrap();
        let e = format!("{:#}", collect(&plan, dir.path()).unwrap_err());
        assert!(
            e.contains(&format!("{id}.json")) && e.contains("wrong type"),
            "{e}"
        );
        // A record lacking the fields gives an empty cell instead.
        super::super::records::write_record(
            dir.path(),
            &super::super::StepRecord {
                id,
                title: "t".into(),
                seconds: 1.0,
                result: serde_json::json!({}),
            },
        )
        .unwrap();
        let r = collect(&plan, dir.path()).unwrap();
        assert!(r.rows[1].fewshot.iter().all(|c| c.host.is_none()));
    }

    #[test]
    fn mean_face_figure_reads_the_landmark_record() {
        let v = serde_json::json!({"iod_error": 30.0, "ci95": 2.0,
            "mean_face_iod_error": 40.5, "mean_face_ci95": 1.5});
        assert_eq!(
            serde_json::from_value::<LandmarkRec>(v)
                .unwrap()
                .mean_face(),
            Some(Figure {
                value: 40.5,
                ci95: Some(1.5)
            })
        );
        // A record from before the baseline existed.
        assert_eq!(
            serde_json::from_value::<LandmarkRec>(serde_json::json!({"iod_error": 30.0}))
                .unwrap()
                .mean_face(),
            None
        );
    }

    #[test]
    fn ablation_gain_claim() {
        let mk = |label: &str, s1: f64, m1: f64| AblationRow {
            label: label.into(),
            aug: "x".into(),
            cells: vec![
                ("supervised".parse().unwrap(), 1, f(s1, 0.5)),
                ("moco-v2".parse().unwrap(), 1, f(m1, 0.5)),
            ],
        };
        let ab = vec![mk("+ flip", 40.0, 30.0), mk("+ more", 42.0, 45.0)];
        let o = orderings(&[], None, &ab, &[1]);
        assert_eq!(o.len(), 1);
        // gains: moco 15, supervised 2 → margin 13, interval √(4 × 0.25) = 1.
        assert!((o[0].margin.unwrap() - 13.0).abs() < 1e-12);
        assert!((o[0].ci95.unwrap() - 1.0).abs() < 1e-12);
        assert_eq!(o[0].verdict, Verdict::Holds);
    }

    #[test]
    fn a_run_must_beat_its_own_initial_knn() {
        // init 10 % over 100 queries: SE = √(0.1·0.9/100) = 3 points, so the bar is 16 %.
        assert!(!beats_init_knn(16.0, 10.0, 100));
        assert!(beats_init_knn(16.01, 10.0, 100));
        let rec = |knn: f64| {
            let v = serde_json::json!({"method": "moco-v2", "final_loss": 3.0, "chance_loss": 6.0, "images_seen": 10,
                "knn_top1": knn, "knn_chance": 1.0, "knn_init_top1": 10.0, "knn_queries": 100});
            pretrain_record(
                "objects",
                "moco-v2".parse().unwrap(),
                &serde_json::from_value(v).unwrap(),
            )
            .unwrap()
        };
        // Loss 0.5 × chance and kNN 15 × chance, yet no better than the random network: flagged.
        assert!(!rec(15.0).learnt);
        assert!(rec(17.0).learnt);
        assert_eq!(rec(17.0).knn_init_top1, Some(10.0));
    }

    #[test]
    fn a_contrastive_run_must_also_meet_the_ratio_against_fresh_keys() {
        let rec = |fresh: f64| {
            let v = serde_json::json!({"method": "moco-v2", "final_loss": 3.0, "chance_loss": 6.0, "images_seen": 10,
                "queue_probe": {"loss_stale": 3.0, "loss_fresh": fresh, "top1_stale": 50.0,
                "top1_fresh": 10.0, "chance": 7.0}});
            pretrain_record(
                "objects",
                "moco-v2".parse().unwrap(),
                &serde_json::from_value(v).unwrap(),
            )
            .unwrap()
        };
        // Final loss 0.5 × chance; the fresh-key loss is judged against the probe's own chance 7.
        assert!(rec(4.2).learnt, "4.2 = 0.6 × 7");
        assert!(
            !rec(4.21).learnt,
            "a low loss owed to key age is not learning"
        );
        assert_eq!(rec(4.2).probe_loss_fresh, Some(4.2));
    }

    #[test]
    fn markdown_has_the_paper_layouts() {
        let rows = vec![
            row("supervised", 80.0, 50.0, 70.0, 8.0),
            row("scratch", 30.0, 30.0, 40.0, 20.0),
        ];
        let r = StudyResults {
            preset: super::super::preset::tiny(),
            seed: 0,
            orderings: orderings(&rows, f(10.0, 0.4), &[], &[1, 5]),
            rows,
            alignment: vec![],
            alignment_orderings: vec![],
            analyses: Default::default(),
            pretraining: vec![
                pretrain_record(
                    "objects",
                    "moco-v2".parse().unwrap(),
                    &serde_json::from_value(
                        serde_json::json!({"method": "moco-v2", "final_loss": 3.0, "chance_loss": 6.0,
                        "images_seen": 174720, "queue": 256, "train_images": 512,
                        "knn_top1": 30.0, "knn_chance": 10.0}),
                    )
                    .unwrap(),
                )
                .unwrap(),
                pretrain_record(
                    "objects",
                    "exemplar-v2".parse().unwrap(),
                    &serde_json::from_value(
                        serde_json::json!({"method": "exemplar-v2", "final_loss": 4.0, "chance_loss": 6.0,
                        "images_seen": 1000, "knn_top1": 30.0, "knn_chance": 10.0}),
                    )
                    .unwrap(),
                )
                .unwrap(),
            ],
            mean_face: f(10.0, 0.4),
            ablation: vec![],
            wall_seconds: WallTime {
                steps: vec![("a".into(), 60.0), ("b".into(), 30.0)],
                total: 90.0,
            },
        };
        // 3/6 = 0.5 ≤ 0.6 learnt; 4/6 = 0.67 did not.
        assert!(r.pretraining[0].learnt && !r.pretraining[1].learnt);
        let md = markdown(&r);
        // The demo column: the canonical demo's loss / chance half an epoch before the end.
        let demo = crate::study::trajectory::demo_ratio_at(174_720.0 - 256.0).unwrap();
        assert!(
            md.contains(&format!(
                "| objects | moco-v2 | 174720 | 256/512 = 0.50 | 3.000 | - | 6.000 | 0.50 | {demo:.2} | 30.00 (10.00) | - | yes |"
            )),
            "{md}"
        );
        assert!(
            md.contains("**Flag:** objects exemplar-v2 did not visibly learn"),
            "{md}"
        );
        assert!(md.contains("| method | base acc (host) | 1-shot host | 1-shot int8 | 5-shot host | 5-shot int8 |"), "{md}");
        assert!(
            md.contains(
                "| supervised | 80.00 ± 1.00 | 50.00 ± 0.80 | 49.90 ± 0.80 | 70.00 ± 0.60 | - |"
            ),
            "{md}"
        );
        assert!(md.contains("| scratch | 20.00 ± 0.30 | - |"), "{md}");
        assert!(
            md.contains("landmark error: supervised < scratch (paper 6.39 vs 24.6): holds"),
            "{md}"
        );
        assert!(md.contains("Total 1.5 min over 2 finished steps"), "{md}");
        assert!(
            md.contains("| mean face (no image) | 10.00 ± 0.40 | (same) |"),
            "{md}"
        );
        assert!(
            md.contains(
                "landmark error: supervised < mean face (beats the mean face) (paper -): holds"
            ),
            "{md}"
        );
        assert!(!md.contains("Table 1 layout"));
    }
}
