//! study: the paper's comparisons end to end, and its analyses.
//!
//! | concept | module |
//! |---|---|
//! | the resumable plan, its execution, records, report and figures | [`study`] |
//! | feature inversion (Figs. 2, 6), reconstruction distances, pretraining-data subsets (Table 2) | [`analysis`] |
//!
//! The top of the library graph: study → exporter → trainer → data.

pub mod analysis;
pub mod study;
