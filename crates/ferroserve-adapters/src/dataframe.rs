//! `pandas_read_json`: a JSON body read as a polars `DataFrame`, with pandas' `read_json`
//! options from the query string (behind the `dataframe` feature).

use aide::generate::GenContext;
use aide::openapi::Operation;
use aide::OperationInput;
use axum::extract::FromRequest;
use polars::prelude::{Column, DataFrame, NamedFrom, Series};
use serde_json::{Map, Value};

use ferroserve_http::api::{DetailError, Json, Rejection, ValidationError};

/// `pandas_read_json`: the body as a `DataFrame`. Query options as pandas' `read_json`:
/// `orient` = `records`, `split`, `index`, `columns` (the default) or `values`; `lines=true` reads
/// newline-delimited records. An unknown option or value is a `422` at `["query", name]`.
#[derive(Debug, Clone)]
pub struct PandasReadJson(pub DataFrame);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Orient {
    Records,
    Split,
    Index,
    Columns,
    Values,
}

fn query_error(name: &str, msg: String, input: Value) -> Rejection {
    ValidationError::one("value_error", vec!["query".into(), name.into()], msg, input).into()
}

fn body_error(msg: String) -> Rejection {
    ValidationError::one("value_error", vec!["body".into()], msg, Value::Null).into()
}

fn options(query: &str) -> Result<(Orient, bool), Rejection> {
    let (mut orient, mut lines) = (None, false);
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "orient" => {
                orient = Some(match &*v {
                    "records" => Orient::Records,
                    "split" => Orient::Split,
                    "index" => Orient::Index,
                    "columns" => Orient::Columns,
                    "values" => Orient::Values,
                    other => {
                        return Err(query_error(
                            "orient",
                            format!("unknown orient '{other}'; expected records, split, index, columns or values"),
                            Value::from(other),
                        ))
                    }
                })
            }
            "lines" => {
                lines = match &*v {
                    "true" | "True" | "1" => true,
                    "false" | "False" | "0" => false,
                    other => {
                        return Err(query_error("lines", format!("lines must be true or false, got '{other}'"), Value::from(other)))
                    }
                }
            }
            other => {
                return Err(query_error(
                    other,
                    format!("unknown read_json option '{other}'; supported: orient, lines"),
                    Value::from(&*v),
                ))
            }
        }
    }
    let orient = match (orient, lines) {
        (None, true) | (Some(Orient::Records), true) => Orient::Records,
        (Some(_), true) => {
            return Err(query_error(
                "orient",
                "lines=true requires orient=records".into(),
                Value::Null,
            ))
        }
        (None, false) => Orient::Columns,
        (Some(o), false) => o,
    };
    Ok((orient, lines))
}

/// Named columns of JSON values, in order, and the number of rows appended as objects (a table
/// of empty objects has rows but no columns).
struct Table(Vec<(String, Vec<Value>)>, usize);

impl Table {
    /// The column `name`, created with `rows` nulls if new.
    fn column(&mut self, name: &str, rows: usize) -> usize {
        match self.0.iter().position(|(n, _)| n == name) {
            Some(i) => i,
            None => {
                self.0.push((name.to_owned(), vec![Value::Null; rows]));
                self.0.len() - 1
            }
        }
    }

    /// Appends one row given as an object.
    fn push_object(&mut self, row: &Map<String, Value>) {
        let rows = self.1;
        for (k, v) in row {
            let i = self.column(k, rows);
            self.0[i].1.push(v.clone());
        }
        for (_, col) in &mut self.0 {
            col.resize(rows + 1, Value::Null);
        }
        self.1 = rows + 1;
    }
}

fn as_object<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>, Rejection> {
    v.as_object()
        .ok_or_else(|| body_error(format!("{what} must be a JSON object")))
}

fn as_array<'a>(v: &'a Value, what: &str) -> Result<&'a Vec<Value>, Rejection> {
    v.as_array()
        .ok_or_else(|| body_error(format!("{what} must be a JSON array")))
}

fn table(body: &[u8], orient: Orient, lines: bool) -> Result<Table, Rejection> {
    let mut t = Table(Vec::new(), 0);
    if lines {
        for (n, line) in body.split(|&b| b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let row: Value = serde_json::from_slice(line)
                .map_err(|e| body_error(format!("line {}: invalid JSON: {e}", n + 1)))?;
            t.push_object(as_object(&row, &format!("line {}", n + 1))?);
        }
        return Ok(t);
    }
    let Json(v) = Json::<Value>(
        serde_json::from_slice(body).map_err(|e| body_error(format!("invalid JSON: {e}")))?,
    );
    match orient {
        Orient::Records => {
            for (i, row) in as_array(&v, "orient=records body")?.iter().enumerate() {
                t.push_object(as_object(row, &format!("record {i}"))?);
            }
        }
        Orient::Index => {
            for (_, row) in as_object(&v, "orient=index body")? {
                t.push_object(as_object(row, "each index entry")?);
            }
        }
        Orient::Columns => {
            let cols = as_object(&v, "orient=columns body")?;
            let mut index: Vec<&str> = Vec::new();
            for (_, col) in cols {
                for k in as_object(col, "each column")?.keys() {
                    if !index.contains(&k.as_str()) {
                        index.push(k);
                    }
                }
            }
            for (name, col) in cols {
                let col = as_object(col, "each column")?;
                t.0.push((
                    name.clone(),
                    index
                        .iter()
                        .map(|i| col.get(*i).cloned().unwrap_or(Value::Null))
                        .collect(),
                ));
            }
        }
        Orient::Split => {
            let obj = as_object(&v, "orient=split body")?;
            let names: Vec<String> = match obj.get("columns") {
                Some(c) => as_array(c, "columns")?
                    .iter()
                    .map(|n| n.as_str().map_or_else(|| n.to_string(), str::to_owned))
                    .collect(),
                None => return Err(body_error("orient=split needs \"columns\"".into())),
            };
            let data = as_array(obj.get("data").unwrap_or(&Value::Null), "data")?;
            t.0 = names.into_iter().map(|n| (n, Vec::new())).collect();
            for (i, row) in data.iter().enumerate() {
                let row = as_array(row, &format!("data[{i}]"))?;
                if row.len() != t.0.len() {
                    return Err(body_error(format!(
                        "data[{i}] has {} values for {} columns",
                        row.len(),
                        t.0.len()
                    )));
                }
                for (j, v) in row.iter().enumerate() {
                    t.0[j].1.push(v.clone());
                }
            }
        }
        Orient::Values => {
            let rows = as_array(&v, "orient=values body")?;
            for (i, row) in rows.iter().enumerate() {
                let row = as_array(row, &format!("row {i}"))?;
                if i == 0 {
                    t.0 = (0..row.len())
                        .map(|j| (j.to_string(), Vec::new()))
                        .collect();
                }
                if row.len() != t.0.len() {
                    return Err(body_error(format!(
                        "row {i} has {} values, row 0 has {}",
                        row.len(),
                        t.0.len()
                    )));
                }
                for (j, v) in row.iter().enumerate() {
                    t.0[j].1.push(v.clone());
                }
            }
        }
    }
    Ok(t)
}

/// One column as a typed series: bool, int64, float64 or string (mixed values become their JSON
/// text); nulls stay nulls.
fn series(name: &str, values: &[Value]) -> Series {
    let non_null = || values.iter().filter(|v| !v.is_null());
    if non_null().all(Value::is_boolean) {
        Series::new(
            name.into(),
            values.iter().map(Value::as_bool).collect::<Vec<_>>(),
        )
    } else if non_null().all(|v| v.as_i64().is_some()) {
        Series::new(
            name.into(),
            values.iter().map(Value::as_i64).collect::<Vec<_>>(),
        )
    } else if non_null().all(Value::is_number) {
        Series::new(
            name.into(),
            values.iter().map(Value::as_f64).collect::<Vec<_>>(),
        )
    } else {
        let text: Vec<Option<String>> = values
            .iter()
            .map(|v| match v {
                Value::Null => None,
                Value::String(s) => Some(s.clone()),
                other => Some(other.to_string()),
            })
            .collect();
        Series::new(name.into(), text)
    }
}

fn frame(t: &Table) -> polars::prelude::PolarsResult<DataFrame> {
    let height = t.0.first().map_or(t.1, |(_, v)| v.len());
    let columns: Vec<Column> = t.0.iter().map(|(n, v)| series(n, v).into()).collect();
    DataFrame::new(height, columns)
}

impl<S: Send + Sync> FromRequest<S> for PandasReadJson {
    type Rejection = Rejection;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Rejection> {
        let (orient, lines) = options(req.uri().query().unwrap_or(""))?;
        let body = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(DetailError::from_body)?;
        let df = frame(&table(&body, orient, lines)?)
            .map_err(|e| body_error(format!("cannot build the data frame: {e}")))?;
        Ok(PandasReadJson(df))
    }
}

impl OperationInput for PandasReadJson {
    fn operation_input(ctx: &mut GenContext, operation: &mut Operation) {
        Json::<Value>::operation_input(ctx, operation);
    }
    fn inferred_early_responses(
        ctx: &mut GenContext,
        _operation: &mut Operation,
    ) -> Vec<(Option<u16>, aide::openapi::Response)> {
        ferroserve_http::api::rejection_responses(ctx, &[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(body: &str, query: &str) -> DataFrame {
        let (o, l) = options(query).unwrap();
        let t = table(body.as_bytes(), o, l).unwrap_or_else(|_| panic!("{query}"));
        super::frame(&t).unwrap()
    }

    #[test]
    fn every_orient_reads_the_same_frame() {
        let cases = [
            (r#"[{"a":1,"b":"x"},{"a":2,"b":"y"}]"#, "orient=records"),
            (
                r#"{"columns":["a","b"],"index":[0,1],"data":[[1,"x"],[2,"y"]]}"#,
                "orient=split",
            ),
            (
                r#"{"0":{"a":1,"b":"x"},"1":{"a":2,"b":"y"}}"#,
                "orient=index",
            ),
            (
                r#"{"a":{"0":1,"1":2},"b":{"0":"x","1":"y"}}"#,
                "orient=columns",
            ),
            (r#"{"a":{"0":1,"1":2},"b":{"0":"x","1":"y"}}"#, ""),
            (
                "{\"a\":1,\"b\":\"x\"}\n{\"a\":2,\"b\":\"y\"}\n",
                "lines=true",
            ),
        ];
        for (body, query) in cases {
            let df = read(body, query);
            assert_eq!(df.shape(), (2, 2), "{query}");
            let names: Vec<&str> = df
                .get_column_names()
                .into_iter()
                .map(|n| n.as_str())
                .collect();
            assert_eq!(names, ["a", "b"], "{query}");
        }
        let df = read("[[1, 2.5], [3, 4]]", "orient=values");
        assert_eq!(df.shape(), (2, 2));
    }

    /// Found by `fuzz/` (dataframe): a key first seen after another key of the same record lost
    /// its value, and records of empty objects lost their rows.
    #[test]
    fn records_keep_every_value_and_row() {
        for query in ["orient=records", "lines=true"] {
            let body = match query {
                "lines=true" => "{\"a\": 1, \"b\": \"x\"}\n{\"c\": true, \"a\": 2}\n{}\n",
                _ => r#"[{"a": 1, "b": "x"}, {"c": true, "a": 2}, {}]"#,
            };
            let df = read(body, query);
            assert_eq!(df.shape(), (3, 3), "{query}");
            let non_null = |name: &str| {
                let col = df.column(name).unwrap();
                col.len() - col.null_count()
            };
            assert_eq!(
                (non_null("a"), non_null("b"), non_null("c")),
                (2, 1, 1),
                "{query}"
            );
        }
        assert_eq!(read("[{}, {}]", "orient=records").shape(), (2, 0));
    }

    #[test]
    fn bad_options_are_422s() {
        assert!(options("orient=table").is_err());
        assert!(options("lines=maybe").is_err());
        assert!(options("dtype=int").is_err());
        assert!(options("orient=split&lines=true").is_err());
    }
}
