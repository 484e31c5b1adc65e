//! JSON has no NaN: serde_json writes a non-finite `f64` as `null`. [`null_as_nan`] reads that
//! `null` back as NaN, so a record struct with plain `f64` fields parses every record its own
//! `Serialize` wrote (`#[serde(deserialize_with = "runtime_cli::nan::null_as_nan")]`).
use serde::{Deserialize, Deserializer};

/// NaN: the default of a figure a record lacks (`#[serde(default = "runtime_cli::nan::nan")]`).
pub fn nan() -> f64 {
    f64::NAN
}

/// A number, or `null` as NaN.
pub fn null_as_nan<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

#[cfg(test)]
mod tests {
    #[derive(serde::Serialize, serde::Deserialize)]
    struct R {
        #[serde(deserialize_with = "super::null_as_nan")]
        x: f64,
    }

    #[test]
    fn nan_round_trips_through_null() {
        let v = serde_json::to_value(R { x: f64::NAN }).unwrap();
        assert_eq!(v, serde_json::json!({"x": null}));
        assert!(serde_json::from_value::<R>(v).unwrap().x.is_nan());
        let r: R = serde_json::from_str(r#"{"x": 2.5}"#).unwrap();
        assert_eq!(r.x, 2.5);
    }
}
