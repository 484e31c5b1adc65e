//! What a row of the study's tables stands for: a backbone pretrained by a [`Method`], or the
//! random-init baseline (paper Table 5 "Scratch"), which no method trains and so is not a
//! `Method`.
use std::fmt;
use std::str::FromStr;

use trainer::method::{Method, Version};

/// A table row's backbone. Serialised as its [`Display`](fmt::Display) name (`moco-v2`,
/// `scratch`), the same text the step ids, folders and `results.json` carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Backbone {
    /// Pretrained with this method.
    Pretrained(Method),
    /// Randomly initialised, never trained.
    Scratch,
}

impl Backbone {
    pub const SUPERVISED: Backbone = Backbone::Pretrained(Method::Supervised);
    pub const MOCO_V2: Backbone = Backbone::Pretrained(Method::Moco(Version::V2));
    pub const EXEMPLAR_V2: Backbone = Backbone::Pretrained(Method::Exemplar(Version::V2));

    /// The method that trained it (`None` for the scratch baseline).
    pub fn method(self) -> Option<Method> {
        match self {
            Backbone::Pretrained(m) => Some(m),
            Backbone::Scratch => None,
        }
    }
}

impl From<Method> for Backbone {
    fn from(m: Method) -> Backbone {
        Backbone::Pretrained(m)
    }
}

impl fmt::Display for Backbone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backbone::Pretrained(m) => m.fmt(f),
            Backbone::Scratch => f.write_str("scratch"),
        }
    }
}

/// Inverse of `Display`: `scratch`, or a method's name.
impl FromStr for Backbone {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Backbone> {
        if s.trim().eq_ignore_ascii_case("scratch") {
            Ok(Backbone::Scratch)
        } else {
            s.parse().map(Backbone::Pretrained)
        }
    }
}

impl From<Backbone> for String {
    fn from(b: Backbone) -> String {
        b.to_string()
    }
}

impl TryFrom<String> for Backbone {
    type Error = anyhow::Error;
    fn try_from(s: String) -> anyhow::Result<Backbone> {
        s.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_text_and_json() {
        for (b, name) in [
            (Backbone::SUPERVISED, "supervised"),
            (Backbone::MOCO_V2, "moco-v2"),
            (Backbone::EXEMPLAR_V2, "exemplar-v2"),
            (Backbone::Pretrained(Method::Moco(Version::V1)), "moco-v1"),
            (Backbone::Scratch, "scratch"),
        ] {
            assert_eq!(b.to_string(), name);
            assert_eq!(name.parse::<Backbone>().unwrap(), b);
            let json = serde_json::to_string(&b).unwrap();
            assert_eq!(json, format!("\"{name}\""));
            assert_eq!(serde_json::from_str::<Backbone>(&json).unwrap(), b);
        }
        assert_eq!(Backbone::Scratch.method(), None);
        assert_eq!(Backbone::MOCO_V2.method(), Some(Method::Moco(Version::V2)));
        let e = "resnet".parse::<Backbone>().unwrap_err().to_string();
        assert!(e.contains("unknown method 'resnet'"), "{e}");
    }
}
