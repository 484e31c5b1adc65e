//! Reading the small text list files: whole file in memory, numbered lines, tolerant of the
//! things real downloads contain (UTF-8 BOM, CRLF line ends, trailing blank lines).
use super::DataError;
use std::path::Path;

/// The lines of `path` as `(1-based line number, line without '\r')`.
pub(crate) fn read_lines(path: &Path) -> Result<Vec<(usize, String)>, DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        // Name the line of the first bad byte so the user can find it.
        let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = good.iter().filter(|&&b| b == b'\n').count() + 1;
        DataError::parse(path, line, "not valid UTF-8 text")
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    Ok(text
        .split('\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix('\r').unwrap_or(l).to_string()))
        .collect())
}

/// The non-blank lines of `path`, numbered as in the file.
pub(crate) fn read_nonblank_lines(path: &Path) -> Result<Vec<(usize, String)>, DataError> {
    Ok(read_lines(path)?
        .into_iter()
        .filter(|(_, l)| !l.trim().is_empty())
        .collect())
}
