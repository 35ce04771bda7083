//! Reading a CSV dataset: a header row, then one record per row.
//!
//! Cells stay text here; [`crate::validate`] decides what is numeric, missing
//! or malformed, so that every problem is counted under the policy that governs it.

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("dataset is not valid CSV: {0}")]
    Csv(#[from] csv::Error),
    #[error("dataset has no header row")]
    NoHeader,
    #[error("dataset header has duplicate column {0:?}")]
    DuplicateColumn(String),
}

/// A parsed CSV file; rows may have the wrong width (a schema finding).
#[derive(Debug, Clone)]
pub struct RawTable {
    pub columns: Vec<String>,
    pub rows: Vec<csv::StringRecord>,
}

pub fn parse_csv(bytes: &[u8]) -> Result<RawTable, DatasetError> {
    let mut reader =
        csv::ReaderBuilder::new().has_headers(true).flexible(true).trim(csv::Trim::All).from_reader(bytes);
    let columns: Vec<String> = reader.headers()?.iter().map(str::to_string).collect();
    if columns.is_empty() || columns.iter().all(String::is_empty) {
        return Err(DatasetError::NoHeader);
    }
    for (i, c) in columns.iter().enumerate() {
        if columns[..i].contains(c) {
            return Err(DatasetError::DuplicateColumn(c.clone()));
        }
    }
    let rows = reader.records().collect::<Result<Vec<_>, _>>()?;
    Ok(RawTable { columns, rows })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_header_and_ragged_rows() {
        let t = parse_csv(b"a, b ,label\n1,2,x\n3,4\n").unwrap();
        assert_eq!(t.columns, ["a", "b", "label"]);
        assert_eq!(t.rows.len(), 2);
        assert_eq!(t.rows[1].len(), 2);
    }

    #[test]
    fn rejects_empty_and_duplicate_headers() {
        assert!(matches!(parse_csv(b""), Err(DatasetError::NoHeader)));
        assert!(matches!(parse_csv(b"a,a\n1,2\n"), Err(DatasetError::DuplicateColumn(_))));
    }
}
