//! Open Inference Protocol v2 (REST) request decoding and response encoding.
//! Pure functions: bytes in, rows or errors out; every error names the field.
//!
//! Accepted input layouts, `F` being the model's feature count:
//! - one tensor of shape `[n, F]` (or `[F]` for one row) with the rows in
//!   row-major order, `data` flat or nested;
//! - `F` tensors named after the features, each of shape `[n]` or `[n, 1]`
//!   (the column layout that pandas-style clients send).
//!
//! Numeric datatypes only (`FP16`/`FP32`/`FP64`, `INT8`..`INT64`,
//! `UINT8`..`UINT64`); `FP32` values are rounded to single precision, integer
//! types must hold integers.

use serde::Deserialize;
use serde::de::{self, IgnoredAny, SeqAccess, Visitor};
use std::fmt::{self, Write as _};

/// A client error: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq)]
pub struct BadRequest {
    pub field: String,
    pub message: String,
}

impl BadRequest {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        BadRequest { field: field.into(), message: message.into() }
    }
}

impl fmt::Display for BadRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct InferRequest {
    #[serde(default)]
    pub id: Option<String>,
    pub inputs: Vec<InputTensor>,
    #[serde(default)]
    pub outputs: Option<Vec<RequestedOutput>>,
    #[serde(default)]
    pub parameters: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
pub struct InputTensor {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    pub data: Numbers,
    #[serde(default)]
    pub parameters: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
pub struct RequestedOutput {
    pub name: String,
    #[serde(default)]
    pub parameters: Option<IgnoredAny>,
}

/// Tensor data flattened into one vector as it is parsed (no `Value` tree).
#[derive(Debug, Default)]
pub struct Numbers {
    pub values: Vec<f64>,
    /// Index of the first value with a fractional part, for integer types.
    pub first_fraction: Option<usize>,
}

impl<'de> Deserialize<'de> for Numbers {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Flat<'a>(&'a mut Numbers);
        impl<'de> Visitor<'de> for Flat<'_> {
            type Value = ();
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array of numbers")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
                if let Some(hint) = seq.size_hint() {
                    self.0.values.reserve(hint);
                }
                while seq.next_element_seed(Elem(self.0))?.is_some() {}
                Ok(())
            }
        }
        struct Elem<'a>(&'a mut Numbers);
        impl<'de> de::DeserializeSeed<'de> for Elem<'_> {
            type Value = ();
            fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
                d.deserialize_any(self)
            }
        }
        impl<'de> Visitor<'de> for Elem<'_> {
            type Value = ();
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number or an array of numbers")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
                if v.fract() != 0.0 && self.0.first_fraction.is_none() {
                    self.0.first_fraction = Some(self.0.values.len());
                }
                self.0.values.push(v);
                Ok(())
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
                self.0.values.push(v as f64);
                Ok(())
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
                self.0.values.push(v as f64);
                Ok(())
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
                Flat(self.0).visit_seq(seq)
            }
        }
        let mut numbers = Numbers::default();
        d.deserialize_seq(Flat(&mut numbers))?;
        Ok(numbers)
    }
}

/// Which outputs the client wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outputs {
    pub predict: bool,
    pub probabilities: bool,
}

/// A decoded batch: `rows` rows of the model's features, row-major.
#[derive(Debug, PartialEq)]
pub struct Batch {
    pub id: Option<String>,
    pub rows: usize,
    pub x: Vec<f64>,
    pub outputs: Outputs,
    /// Where the rows came from, for errors about a row: `inputs[0].data`, or
    /// `inputs` for one tensor per feature.
    pub source: &'static str,
}

/// Name of the probabilities output (the name scikit-learn servers use).
pub const PROBA_OUTPUT: &str = "predict_proba";
pub const PREDICT_OUTPUT: &str = "predict";

/// Parses a request body; serde's path tells which field was malformed.
pub fn parse(body: &[u8]) -> Result<InferRequest, BadRequest> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        // serde_json's message ends with "at line 1 column N"; keep it short.
        let msg = inner.to_string();
        let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
        let field = if path == "." { String::new() } else { path };
        if inner.is_syntax() || inner.is_eof() {
            BadRequest::new("body", format!("invalid JSON: {msg}"))
        } else {
            BadRequest::new(field, msg)
        }
    })
}

fn check_datatype(i: usize, t: &InputTensor) -> Result<(), BadRequest> {
    let field = || format!("inputs[{i}].datatype");
    let integer = match t.datatype.as_str() {
        "FP16" | "FP32" | "FP64" => false,
        "INT8" | "INT16" | "INT32" | "INT64" | "UINT8" | "UINT16" | "UINT32" | "UINT64" => true,
        "BOOL" | "BYTES" => {
            return Err(BadRequest::new(
                field(),
                format!("{} is not supported; send FP32, FP64 or INT64", t.datatype),
            ));
        }
        other => {
            return Err(BadRequest::new(field(), format!("unknown datatype {other:?}")));
        }
    };
    if integer && let Some(at) = t.data.first_fraction {
        return Err(BadRequest::new(
            format!("inputs[{i}].data[{at}]"),
            format!("{} tensor holds a non-integer", t.datatype),
        ));
    }
    if t.datatype == "FP32"
        && let Some(at) = t.data.values.iter().position(|v| (*v as f32).is_infinite())
    {
        return Err(BadRequest::new(
            format!("inputs[{i}].data[{at}]"),
            format!("{:e} does not fit in FP32", t.data.values[at]),
        ));
    }
    if t.datatype.starts_with('U')
        && let Some(at) = t.data.values.iter().position(|v| *v < 0.0)
    {
        return Err(BadRequest::new(
            format!("inputs[{i}].data[{at}]"),
            format!("{} tensor holds a negative number", t.datatype),
        ));
    }
    Ok(())
}

/// Element count the shape promises, or an error naming it.
fn shape_len(i: usize, shape: &[i64]) -> Result<usize, BadRequest> {
    let field = format!("inputs[{i}].shape");
    if shape.is_empty() || shape.len() > 2 {
        return Err(BadRequest::new(field, "expected [rows, features] or [rows]"));
    }
    let mut n: usize = 1;
    for d in shape {
        let d = usize::try_from(*d)
            .map_err(|_| BadRequest::new(field.clone(), "dimensions must be non-negative"))?;
        n = n.checked_mul(d).ok_or_else(|| BadRequest::new(field.clone(), "too large"))?;
    }
    Ok(n)
}

fn values(i: usize, t: &InputTensor) -> Result<&[f64], BadRequest> {
    let n = shape_len(i, &t.shape)?;
    if n != t.data.values.len() {
        return Err(BadRequest::new(
            format!("inputs[{i}].data"),
            format!("holds {} values but shape {:?} needs {n}", t.data.values.len(), t.shape),
        ));
    }
    Ok(&t.data.values)
}

/// FP32 tensors are taken at the precision the client meant.
fn at_precision(t: &InputTensor, v: f64) -> f64 {
    if t.datatype == "FP32" { v as f32 as f64 } else { v }
}

/// Turns a parsed request into a batch for a model with `features`.
pub fn decode(mut req: InferRequest, features: &[String], regression: bool) -> Result<Batch, BadRequest> {
    let f = features.len();
    if req.inputs.is_empty() {
        return Err(BadRequest::new("inputs", "at least one input tensor is required"));
    }
    for (i, t) in req.inputs.iter().enumerate() {
        check_datatype(i, t)?;
    }
    let (rows, x, source) = if req.inputs.len() == 1 {
        let t = &req.inputs[0];
        values(0, t)?;
        let rows = match *t.shape.as_slice() {
            [n, c] if c as usize == f => n as usize,
            [n] if f == 1 => n as usize,
            [c] if c as usize == f => 1,
            _ => {
                return Err(BadRequest::new(
                    "inputs[0].shape",
                    format!("{:?} does not match [rows, {f}]", t.shape),
                ));
            }
        };
        let fp32 = t.datatype == "FP32";
        // Take the parsed vector rather than copy it: this is the hot path.
        let mut x = std::mem::take(&mut req.inputs[0].data.values);
        if fp32 {
            x.iter_mut().for_each(|v| *v = *v as f32 as f64);
        }
        (rows, x, "inputs[0].data")
    } else {
        // Column layout: one tensor per feature, matched by name.
        if req.inputs.len() != f {
            return Err(BadRequest::new(
                "inputs",
                format!(
                    "{} tensors given; send one [rows, {f}] tensor or one tensor per feature",
                    req.inputs.len()
                ),
            ));
        }
        let mut columns: Vec<Option<&InputTensor>> = vec![None; f];
        let mut rows = None;
        for (i, t) in req.inputs.iter().enumerate() {
            let j = features.iter().position(|name| *name == t.name).ok_or_else(|| {
                BadRequest::new(
                    format!("inputs[{i}].name"),
                    format!("{:?} is not a feature of this model", t.name),
                )
            })?;
            if !matches!(t.shape.as_slice(), [_] | [_, 1]) {
                return Err(BadRequest::new(
                    format!("inputs[{i}].shape"),
                    "a feature column must have shape [rows] or [rows, 1]",
                ));
            }
            let n = values(i, t)?.len();
            if *rows.get_or_insert(n) != n {
                return Err(BadRequest::new(
                    format!("inputs[{i}].shape"),
                    "feature columns differ in length",
                ));
            }
            if columns[j].replace(t).is_some() {
                return Err(BadRequest::new(
                    format!("inputs[{i}].name"),
                    format!("feature {:?} given twice", t.name),
                ));
            }
        }
        let rows = rows.unwrap_or(0);
        let columns: Vec<&InputTensor> = columns.into_iter().flatten().collect();
        let mut x = Vec::with_capacity(rows * f);
        for r in 0..rows {
            x.extend(columns.iter().map(|t| at_precision(t, t.data.values[r])));
        }
        (rows, x, "inputs")
    };
    if rows == 0 {
        return Err(BadRequest::new("inputs[0].shape", "the batch has no rows"));
    }
    let mut outputs = Outputs { predict: true, probabilities: false };
    if let Some(requested) = &req.outputs
        && !requested.is_empty()
    {
        outputs.predict = false;
        for (i, o) in requested.iter().enumerate() {
            match o.name.as_str() {
                PREDICT_OUTPUT => outputs.predict = true,
                PROBA_OUTPUT if !regression => outputs.probabilities = true,
                other => {
                    let known = if regression {
                        PREDICT_OUTPUT.to_string()
                    } else {
                        format!("{PREDICT_OUTPUT} and {PROBA_OUTPUT}")
                    };
                    return Err(BadRequest::new(
                        format!("outputs[{i}].name"),
                        format!("unknown output {other:?}; this model has {known}"),
                    ));
                }
            }
        }
    }
    Ok(Batch { id: req.id, rows, x, outputs, source })
}

/// Appends `s` as a JSON string literal.
pub fn push_json_str(out: &mut String, s: &str) {
    out.push_str(&serde_json::to_string(s).expect("strings serialise"));
}

/// Longest text `push_json_f64` writes: `-0.000000` and 17 significant digits.
pub const MAX_F64_JSON_LEN: usize = 26;

/// Appends a JSON number (`null` for a non-finite value, which JSON lacks):
/// plain decimals at everyday magnitudes, exponent form outside them, where
/// plain decimals would spell out up to 300 zeros. So every value takes at most
/// `MAX_F64_JSON_LEN` bytes, and an answer's size is known from its shape.
pub fn push_json_f64(out: &mut String, v: f64) {
    if !v.is_finite() {
        out.push_str("null");
    } else if v == 0.0 || (1e-7..1e16).contains(&v.abs()) {
        let _ = write!(out, "{v}");
    } else {
        let _ = write!(out, "{v:e}");
    }
}

/// What an answer is made of, besides its rows.
#[derive(Debug, Clone, Copy)]
pub struct AnswerShape {
    /// `"model_name":…,"model_version":…`.
    pub head_bytes: usize,
    /// The request's `id` before escaping, when it has one.
    pub id_bytes: Option<usize>,
    /// Longest `predict` value: the longest class name as a JSON string, or a number.
    pub predict_value_bytes: usize,
    /// Probabilities per row (the number of classes).
    pub classes: usize,
}

/// Bytes around each output tensor's data (name, datatype, shape with two
/// 20-digit dimensions), rounded up.
const OUTPUT_ENVELOPE: usize = 128;

/// An upper bound of the bytes of the answer to `rows` rows, for refusing a
/// request before scoring it. Saturates rather than overflows.
pub fn answer_bound(rows: usize, outputs: Outputs, shape: &AnswerShape) -> usize {
    // `{`, the head, `,"id":` and the id escaped (`\u00XX` at worst), `,"outputs":[`, `]}`.
    let id = shape.id_bytes.map_or(0, |n| n.saturating_mul(6).saturating_add(8));
    let mut total = 16usize.saturating_add(shape.head_bytes).saturating_add(id);
    // Each value and the comma after it.
    let mut per_row = 0usize;
    if outputs.predict {
        total = total.saturating_add(OUTPUT_ENVELOPE);
        per_row = per_row.saturating_add(shape.predict_value_bytes + 1);
    }
    if outputs.probabilities {
        total = total.saturating_add(OUTPUT_ENVELOPE);
        per_row = per_row.saturating_add(shape.classes.saturating_mul(MAX_F64_JSON_LEN + 1));
    }
    total.saturating_add(rows.saturating_mul(per_row))
}

/// Most rows whose answer fits in `limit` bytes (for telling the client).
pub fn rows_within(limit: usize, outputs: Outputs, shape: &AnswerShape) -> usize {
    let fixed = answer_bound(0, outputs, shape);
    let per_row = answer_bound(1, outputs, shape) - fixed;
    limit.saturating_sub(fixed).checked_div(per_row).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn features() -> Vec<String> {
        ["a", "b", "c"].iter().map(|s| s.to_string()).collect()
    }

    fn decode_str(body: &str) -> Result<Batch, BadRequest> {
        decode(parse(body.as_bytes())?, &features(), false)
    }

    #[test]
    fn row_layout_flat_or_nested() {
        let flat =
            decode_str(r#"{"inputs":[{"name":"x","shape":[2,3],"datatype":"FP64","data":[1,2,3,4,5,6]}]}"#)
                .unwrap();
        let nested = decode_str(
            r#"{"id":"r1","inputs":[{"name":"x","shape":[2,3],"datatype":"INT64","data":[[1,2,3],[4,5,6]]}]}"#,
        )
        .unwrap();
        assert_eq!(flat.x, nested.x);
        assert_eq!((nested.rows, nested.id.as_deref()), (2, Some("r1")));
        assert_eq!(nested.source, "inputs[0].data");
        let one = decode_str(r#"{"inputs":[{"name":"x","shape":[3],"datatype":"FP32","data":[0.1,2,3]}]}"#)
            .unwrap();
        assert_eq!(one.rows, 1);
        assert_eq!(one.x[0], 0.1f32 as f64);
    }

    #[test]
    fn column_layout_by_feature_name() {
        let b = decode_str(
            r#"{"inputs":[
                {"name":"c","shape":[2],"datatype":"FP64","data":[5,6]},
                {"name":"a","shape":[2,1],"datatype":"FP64","data":[1,2]},
                {"name":"b","shape":[2],"datatype":"INT64","data":[3,4]}]}"#,
        )
        .unwrap();
        assert_eq!(b.x, [1.0, 3.0, 5.0, 2.0, 4.0, 6.0]);
        assert_eq!(b.source, "inputs");
    }

    #[test]
    fn outputs_can_be_chosen() {
        let b = decode_str(
            r#"{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP64","data":[1,2,3]}],
                "outputs":[{"name":"predict_proba"}]}"#,
        )
        .unwrap();
        assert_eq!(b.outputs, Outputs { predict: false, probabilities: true });
    }

    /// Each malformed body names the field at fault.
    #[test]
    fn malformed_requests_name_the_field() {
        let cases = [
            ("", "body"),
            ("{", "body"),
            ("[]", ""),
            (r#"{"inputs":{}}"#, "inputs"),
            (r#"{"inputs":[]}"#, "inputs"),
            (r#"{"inputs":[{"shape":[1,3],"datatype":"FP64","data":[1,2,3]}]}"#, "inputs[0]"),
            (
                r#"{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP64","data":[1,"2",3]}]}"#,
                "inputs[0].data[1]",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP64","data":[1,null,3]}]}"#,
                "inputs[0].data[1]",
            ),
            (r#"{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP64","data":7}]}"#, "inputs[0].data"),
            (
                r#"{"inputs":[{"name":"x","shape":[1,3],"datatype":"BYTES","data":[1,2,3]}]}"#,
                "inputs[0].datatype",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP8","data":[1,2,3]}]}"#,
                "inputs[0].datatype",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[1,3],"datatype":"INT32","data":[1,2.5,3]}]}"#,
                "inputs[0].data[1]",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[1,3],"datatype":"UINT8","data":[1,-2,3]}]}"#,
                "inputs[0].data[1]",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,1e308,3]}]}"#,
                "inputs[0].data[1]",
            ),
            (r#"{"inputs":[{"name":"x","shape":[2,3],"datatype":"FP64","data":[1,2,3]}]}"#, "inputs[0].data"),
            (
                r#"{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP64","data":[1,2,3,4]}]}"#,
                "inputs[0].shape",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[-1,3],"datatype":"FP64","data":[1,2,3]}]}"#,
                "inputs[0].shape",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[1,1,3],"datatype":"FP64","data":[1,2,3]}]}"#,
                "inputs[0].shape",
            ),
            (r#"{"inputs":[{"name":"x","shape":[0,3],"datatype":"FP64","data":[]}]}"#, "inputs[0].shape"),
            (
                r#"{"inputs":[{"name":"x","shape":["1",3],"datatype":"FP64","data":[1,2,3]}]}"#,
                "inputs[0].shape[0]",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP64","data":[1,2,3]}],"outputs":[{"name":"foo"}]}"#,
                "outputs[0].name",
            ),
            (
                r#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP64","data":[1]},{"name":"z","shape":[1],"datatype":"FP64","data":[1]},{"name":"c","shape":[1],"datatype":"FP64","data":[1]}]}"#,
                "inputs[1].name",
            ),
            (
                r#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP64","data":[1]},{"name":"b","shape":[2],"datatype":"FP64","data":[1,2]},{"name":"c","shape":[1],"datatype":"FP64","data":[1]}]}"#,
                "inputs[1].shape",
            ),
            (
                r#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP64","data":[1]},{"name":"a","shape":[1],"datatype":"FP64","data":[1]},{"name":"c","shape":[1],"datatype":"FP64","data":[1]}]}"#,
                "inputs[1].name",
            ),
            (
                r#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP64","data":[1]},{"name":"b","shape":[1],"datatype":"FP64","data":[1]}]}"#,
                "inputs",
            ),
        ];
        for (body, field) in cases {
            let err = decode_str(body).expect_err(body);
            assert_eq!(err.field, field, "{body}: {err}");
            assert!(!err.message.is_empty());
        }
    }

    #[test]
    fn huge_numbers_parse_and_overflowing_shapes_are_refused() {
        let err = decode_str(
            r#"{"inputs":[{"name":"x","shape":[9223372036854775807,9223372036854775807],"datatype":"FP64","data":[1]}]}"#,
        )
        .unwrap_err();
        assert_eq!(err.field, "inputs[0].shape");
    }

    /// The bound the answer size check relies on, over edge cases and a million
    /// random bit patterns; and every value reads back as itself.
    #[test]
    fn every_number_fits_in_max_f64_json_len_and_round_trips() {
        let edges = [
            0.0,
            -0.0,
            1e-7,
            -1.2345678901234567e-7,
            f64::from_bits(1e-7f64.to_bits() - 1), // the largest number below 1e-7
            0.12345678901234567,
            -0.00000012345678901234567,
            1e16,
            9999999999999998.0,
            -1234567890123456.7,
            f64::MAX,
            f64::MIN,
            f64::MIN_POSITIVE,
            -f64::MIN_POSITIVE,
            5e-324,
            -2.2250738585072014e-308,
            1e-300,
            1e300,
        ];
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let random = std::iter::repeat_with(move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            f64::from_bits(state)
        });
        // Probabilities are in [0, 1]: take many of those too.
        let unit = random.take(200_000).map(|v| if v.is_finite() { v.abs() % 1.0 } else { 0.5 });
        let mut longest = 0;
        for v in edges.into_iter().chain(random.take(1_000_000)).chain(unit).filter(|v| v.is_finite()) {
            let mut s = String::new();
            push_json_f64(&mut s, v);
            longest = longest.max(s.len());
            assert!(s.len() <= MAX_F64_JSON_LEN, "{v:e} -> {s} ({} bytes)", s.len());
            assert!(serde_json::from_str::<serde_json::Value>(&s).is_ok_and(|n| n.is_number()), "{s}");
            // Rust's own parser: serde_json's (without `float_roundtrip`) may be 1 ulp off.
            assert_eq!(s.parse::<f64>().unwrap().to_bits(), v.to_bits(), "{s}");
        }
        assert_eq!(longest, MAX_F64_JSON_LEN, "the bound is tight");
        // Everyday values keep their plain form.
        let mut s = String::new();
        for v in [0.9733154345035553, 1.0, 2.5e-3, 123.25] {
            push_json_f64(&mut s, v);
            s.push(' ');
        }
        assert_eq!(s, "0.9733154345035553 1 0.0025 123.25 ");
    }

    #[test]
    fn answer_bound_grows_with_rows_and_outputs_and_saturates() {
        let shape = AnswerShape { head_bytes: 40, id_bytes: None, predict_value_bytes: 12, classes: 3 };
        let both = Outputs { predict: true, probabilities: true };
        let predict = Outputs { predict: true, probabilities: false };
        let proba = Outputs { predict: false, probabilities: true };
        assert_eq!(answer_bound(10, predict, &shape) - answer_bound(9, predict, &shape), 13);
        assert_eq!(answer_bound(10, proba, &shape) - answer_bound(9, proba, &shape), 3 * 27);
        assert!(answer_bound(1, both, &shape) > answer_bound(1, proba, &shape));
        let with_id = AnswerShape { id_bytes: Some(10), ..shape };
        assert_eq!(answer_bound(1, predict, &with_id) - answer_bound(1, predict, &shape), 68);
        assert_eq!(answer_bound(usize::MAX, both, &shape), usize::MAX);
        // The finding: 4 MiB of `0,` is half a million iris rows; their probabilities
        // would take about 40 MB, five times the default limit.
        let rows = (4 << 20) / 8;
        assert!(answer_bound(rows, proba, &shape) > 40_000_000);
        let fit = rows_within(8 << 20, proba, &shape);
        assert!(answer_bound(fit, proba, &shape) <= 8 << 20);
        assert!(answer_bound(fit + 1, proba, &shape) > 8 << 20);
        assert_eq!(rows_within(10, proba, &shape), 0);
    }

    #[test]
    fn json_helpers_escape_and_refuse_non_finite() {
        let mut s = String::new();
        push_json_str(&mut s, "a\"b");
        push_json_f64(&mut s, f64::NAN);
        push_json_f64(&mut s, 1.5);
        assert_eq!(s, r#""a\"b"null1.5"#);
    }
}
