//! The one error type of the dataset layer.
//!
//! Every variant carries the file it is about and, for text formats, the 1-based line number,
//! so a user with a broken download reads e.g.
//! `data/train.csv:17: expected 2 columns (filename,label), found 3` instead of a panic.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be opened, read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A text row is malformed (wrong column count, not a number, bad header...).
    #[error("{}:{line}: {msg}", path.display())]
    Parse {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    /// A row refers to something the dataset does not define (an image absent from the identity
    /// file, a MAFL name absent from the landmark file, a partition code that is not 0/1/2...).
    #[error("{}:{line}: unknown label: {msg}", path.display())]
    UnknownLabel {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    /// A whole-file inconsistency that no single line is to blame for (count mismatch against
    /// the rows actually present, an empty split, a missing image for a listed row...).
    #[error("{}: {msg}", path.display())]
    Invalid { path: PathBuf, msg: String },
    /// The image exists but cannot be decoded as PNG or JPEG.
    #[error("{}: cannot decode image: {msg}", path.display())]
    Decode { path: PathBuf, msg: String },
    /// Bad generator arguments (e.g. too few classes to split 64/16/20).
    #[error("invalid arguments: {0}")]
    Config(String),
    /// An index past the end of a list (a caller bug, reported instead of panicking).
    #[error("index {index} out of range for a list of {len} images ({})", root.display())]
    OutOfRange {
        root: PathBuf,
        index: usize,
        len: usize,
    },
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }
    pub(crate) fn parse(path: impl Into<PathBuf>, line: usize, msg: impl Into<String>) -> Self {
        DataError::Parse {
            path: path.into(),
            line,
            msg: msg.into(),
        }
    }
    pub(crate) fn invalid(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        DataError::Invalid {
            path: path.into(),
            msg: msg.into(),
        }
    }
}
