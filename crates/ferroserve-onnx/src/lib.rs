//! # ferroserve-onnx
//!
//! Serving an ONNX classifier: a model deployment run by
//! [tract](https://github.com/sonos/tract) (pure Rust, nothing downloaded), behind a FastAPI-style
//! ingress that validates the input. The `ferroserve` binary registers it as
//! `ferroserve.onnx:app`. It is an application built on `ferroserve`'s public API, nothing more,
//! and keeps tract out of every crate below it.
//!
//! [`app`] builds a two-deployment application, as Ray Serve's model-composition examples do:
//!
//! | deployment | what it does |
//! |---|---|
//! | `"Preprocess"` (ingress, [`ferroserve::api::ApiIngress`]) | `POST /predict` takes the `json_to_ndarray` body (`{"array": [[5.1, 3.5, 1.4, 0.2]]}`), checks it is `[n, features]` finite numbers (else `422` in FastAPI's shape), asks `Model`, and answers [`Prediction`]; `GET /` answers [`ModelInfo`]; `/docs` and `/openapi.json` describe both |
//! | `"Model"` ([`OnnxModel`]) | loads the model in its constructor and answers [`Predict`] through a [`ferroserve::DeploymentHandle`], running at most `max_batch_size` rows per model run |
//!
//! ```no_run
//! use ferroserve_onnx::{self as onnx, OnnxArgs};
//!
//! fn main() -> Result<(), ferroserve::Error> {
//!     let args = OnnxArgs::new("apps/iris/iris.onnx").labels(["setosa", "versicolor", "virginica"]);
//!     ferroserve::run(onnx::app(args)?.route_prefix("/iris"))
//! }
//! ```
//!
//! ```sh
//! curl -X POST http://127.0.0.1:8000/iris/predict -H 'content-type: application/json' \
//!      -d '{"array": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}'
//! # {"labels":["setosa","virginica"],"probabilities":[[0.99656004,0.0034356783,0.0000042233214],[0.00008974195,0.011937765,0.98797256]]}
//! ```
//!
//! The model must take one 2-D float tensor `[batch, features]` (the number of features fixed in
//! the model, the batch dimension free) and give class probabilities `[batch, classes]`; class
//! names come from [`OnnxArgs::labels`], not from the graph. tract runs standard ONNX operators;
//! `ai.onnx.ml` ones (`ZipMap`, `LinearClassifier`, ...) are not supported, so export scikit-learn
//! models without them (see `apps/iris/train.py`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::State;
use ndarray::{Array2, ArrayView1, ArrayView2, Axis};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tract_onnx::prelude::{
    tvec, DatumType, Framework, InferenceFact, InferenceModelExt, IntoTValue, Tensor, TractError,
    TypedModel, TypedSimplePlan,
};
use tract_onnx::tract_hir::internal::{DimLike, Factoid, TDim, ToDim};

use ferroserve::adapters::{DynArray, JsonToNdarray};
use ferroserve::api::routing::{get_with, post_with};
use ferroserve::api::{ApiIngress, ApiRouter, Json, ValidationError};
use ferroserve::{Application, BoxError, Deployment, DeploymentHandle, Error, Handles};

/// Default of [`OnnxArgs::max_batch_size`]: rows per model run.
pub const DEFAULT_MAX_BATCH_SIZE: usize = 256;

/// Default of [`OnnxArgs::max_rows`]: rows per request.
pub const DEFAULT_MAX_ROWS: usize = 10_000;

fn default_max_batch_size() -> usize {
    DEFAULT_MAX_BATCH_SIZE
}

fn default_max_rows() -> usize {
    DEFAULT_MAX_ROWS
}

/// What to serve and how: the application's arguments (Ray's `app_builder` args), as given in
/// code or in a config file. Unknown fields are an error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnnxArgs {
    /// The `.onnx` file. A relative path is relative to the working directory.
    pub model_path: PathBuf,
    /// The model input to feed; default the model's first input. It must be a 2-D float tensor
    /// `[batch, features]` with a fixed number of features.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_name: Option<String>,
    /// The tensor holding the class probabilities, `[batch, classes]`; default the model's first
    /// output. Any named tensor of the graph may be chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_name: Option<String>,
    /// The class names, in the order of the model's probabilities; default the class indices
    /// (`"0"`, `"1"`, ...). Loading fails unless there is one name per class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    /// Rows per model run (at least 1): a larger request is split into chunks of this many rows,
    /// run one after the other, and the results concatenated. Default
    /// [`DEFAULT_MAX_BATCH_SIZE`].
    #[serde(default = "default_max_batch_size")]
    pub max_batch_size: usize,
    /// Rows per request (at least 1): a request with more is answered `422`. Default
    /// [`DEFAULT_MAX_ROWS`].
    #[serde(default = "default_max_rows")]
    pub max_rows: usize,
}

impl OnnxArgs {
    /// Arguments for the model at `model_path`, every other field at its default.
    pub fn new(model_path: impl Into<PathBuf>) -> Self {
        OnnxArgs {
            model_path: model_path.into(),
            input_name: None,
            output_name: None,
            labels: None,
            max_batch_size: DEFAULT_MAX_BATCH_SIZE,
            max_rows: DEFAULT_MAX_ROWS,
        }
    }

    /// Sets the class names, in the order of the model's probabilities.
    pub fn labels<S: Into<String>>(mut self, labels: impl IntoIterator<Item = S>) -> Self {
        self.labels = Some(labels.into_iter().map(Into::into).collect());
        self
    }

    /// The model file's name (its path if it has none), as [`ModelInfo::model`] shows it.
    fn model_name(&self) -> String {
        self.model_path.file_name().map_or_else(
            || self.model_path.display().to_string(),
            |name| name.to_string_lossy().into_owned(),
        )
    }
}

/// A loaded, optimized ONNX classifier, ready to run: `Send + Sync`, and cheap to clone (clones
/// share the model). Runs on the calling thread; concurrent calls run in parallel.
#[derive(Clone)]
pub struct OnnxModel {
    inner: Arc<Loaded>,
}

struct Loaded {
    path: PathBuf,
    plan: TypedSimplePlan<TypedModel>,
    input_type: DatumType,
    num_features: usize,
    labels: Vec<String>,
    max_batch_size: usize,
}

impl std::fmt::Debug for OnnxModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxModel")
            .field("path", &self.inner.path)
            .field("num_features", &self.inner.num_features)
            .field("labels", &self.inner.labels)
            .field("max_batch_size", &self.inner.max_batch_size)
            .finish_non_exhaustive()
    }
}

/// A tract error with its whole chain of causes (`outer: inner: root`).
fn chain(e: TractError) -> String {
    format!("{e:#}")
}

fn is_float(dt: DatumType) -> bool {
    matches!(dt, DatumType::F16 | DatumType::F32 | DatumType::F64)
}

impl OnnxModel {
    /// Loads `args.model_path` with tract, with a free batch dimension, and optimizes it.
    ///
    /// Blocking (reads the file and optimizes the graph). Errors name the file: it cannot be
    /// read or parsed, has no such input or output, its input is not a 2-D float tensor
    /// `[batch, features]` with a fixed number of features, its output is not `[batch, classes]`,
    /// `labels` does not have one name per class, or `max_batch_size`/`max_rows` is 0.
    pub fn load(args: &OnnxArgs) -> Result<OnnxModel, BoxError> {
        let path = &args.model_path;
        let fail = |why: String| -> BoxError {
            format!("cannot load ONNX model '{}': {why}", path.display()).into()
        };
        if args.max_batch_size == 0 {
            return Err(fail("max_batch_size must be at least 1, got 0".into()));
        }
        if args.max_rows == 0 {
            return Err(fail("max_rows must be at least 1, got 0".into()));
        }
        // Opened first for a plain I/O message ("No such file or directory (os error 2)").
        std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
        let mut model = tract_onnx::onnx()
            .model_for_path(path)
            .map_err(|e| fail(chain(e)))?;

        let inputs: Vec<String> = model
            .input_outlets()
            .map_err(|e| fail(chain(e)))?
            .iter()
            .map(|o| model.node(o.node).name.clone())
            .collect();
        let input = match &args.input_name {
            Some(name) if inputs.contains(name) => name.clone(),
            Some(name) => {
                return Err(fail(format!(
                    "it has no input named '{name}' (inputs: {inputs:?})"
                )))
            }
            None => inputs
                .first()
                .cloned()
                .ok_or_else(|| fail("it has no inputs".into()))?,
        };
        model
            .set_input_names([&input])
            .map_err(|e| fail(chain(e)))?;

        let outputs: Vec<String> = model
            .output_outlets()
            .map_err(|e| fail(chain(e)))?
            .iter()
            .map(|&o| {
                model
                    .outlet_label(o)
                    .map_or_else(|| model.node(o.node).name.clone(), str::to_owned)
            })
            .collect();
        let output = match &args.output_name {
            Some(name) => name.clone(),
            None => outputs
                .first()
                .cloned()
                .ok_or_else(|| fail("it has no outputs".into()))?,
        };
        model.set_output_names([&output]).map_err(|_| {
            fail(format!(
                "it has no output or tensor named '{output}' (outputs: {outputs:?})"
            ))
        })?;

        let fact = model.input_fact(0).map_err(|e| fail(chain(e)))?.clone();
        let input_type = fact.datum_type.concretize().filter(|&dt| is_float(dt));
        let rank = fact.shape.rank().concretize();
        let num_features = fact
            .shape
            .dim(1)
            .and_then(|d| d.concretize())
            .and_then(|d| d.to_usize().ok())
            .filter(|&n| n > 0);
        let (Some(input_type), Some(2), Some(num_features)) = (input_type, rank, num_features)
        else {
            return Err(fail(format!(
                "input '{input}' must be a 2-D float tensor [batch, features] with a fixed \
                 number of features, got {}",
                describe(&fact)
            )));
        };
        // Keep the model's own batch symbol if it names one; otherwise make the batch free.
        let batch = match fact.shape.dim(0).and_then(|d| d.concretize()) {
            Some(dim @ TDim::Sym(_)) => dim,
            _ => model.symbols.sym("batch").to_dim(),
        };
        model
            .set_input_fact(
                0,
                InferenceFact::dt_shape(input_type, tvec![batch, num_features.to_dim()]),
            )
            .map_err(|e| fail(chain(e)))?;
        let model = model.into_optimized().map_err(|e| fail(chain(e)))?;

        let out = model.output_fact(0).map_err(|e| fail(chain(e)))?;
        let classes = (out.shape.rank() == 2)
            .then(|| out.shape[1].to_usize().ok())
            .flatten()
            .filter(|&n| n > 0);
        let Some(classes) = classes.filter(|_| is_float(out.datum_type)) else {
            return Err(fail(format!(
                "output '{output}' must be float class probabilities [batch, classes], got {:?} {:?}",
                out.datum_type, out.shape
            )));
        };
        let labels = match &args.labels {
            Some(labels) if labels.len() == classes => labels.clone(),
            Some(labels) => {
                return Err(fail(format!(
                    "labels has {} names but output '{output}' has {classes} classes",
                    labels.len()
                )))
            }
            None => (0..classes).map(|i| i.to_string()).collect(),
        };
        let plan = model.into_runnable().map_err(|e| fail(chain(e)))?;
        Ok(OnnxModel {
            inner: Arc::new(Loaded {
                path: path.clone(),
                plan,
                input_type,
                num_features,
                labels,
                max_batch_size: args.max_batch_size,
            }),
        })
    }

    /// The file the model was loaded from.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The number of features (columns) of one input row.
    pub fn num_features(&self) -> usize {
        self.inner.num_features
    }

    /// The class names, one per column of [`OnnxModel::predict`]'s output.
    pub fn labels(&self) -> &[String] {
        &self.inner.labels
    }

    /// The class probabilities of each row of `rows` (`[n, num_features]`), as `[n, classes]`.
    ///
    /// Runs the model on chunks of at most `max_batch_size` rows, one after the other, on the
    /// calling thread (it blocks: from async code, call it through the `Model` deployment or
    /// `spawn_blocking`). No rows give an empty `[0, classes]` without running the model. Errors:
    /// `rows` does not have `num_features` columns, or the model run fails or gives an output
    /// that is not `[rows, classes]`.
    pub fn predict(&self, rows: ArrayView2<'_, f32>) -> Result<Array2<f32>, BoxError> {
        self.predict_until(rows, || false)
    }

    /// [`OnnxModel::predict`], giving up between two chunks once `cancelled()` is true.
    fn predict_until(
        &self,
        rows: ArrayView2<'_, f32>,
        cancelled: impl Fn() -> bool,
    ) -> Result<Array2<f32>, BoxError> {
        let model = &*self.inner;
        let (n, features) = rows.dim();
        if features != model.num_features {
            return Err(format!(
                "expected shape [n, {}], got [{n}, {features}]",
                model.num_features
            )
            .into());
        }
        let classes = model.labels.len();
        let mut out = Vec::with_capacity(n * classes);
        for chunk in rows.axis_chunks_iter(Axis(0), model.max_batch_size) {
            if cancelled() {
                return Err("cancelled".into());
            }
            let shape = [chunk.nrows(), features];
            let input = match chunk.as_slice() {
                Some(values) => Tensor::from_shape(&shape, values),
                None => Tensor::from_shape(&shape, &chunk.iter().copied().collect::<Vec<_>>()),
            }
            .map_err(chain)?;
            let input = if model.input_type == DatumType::F32 {
                input
            } else {
                input
                    .cast_to_dt(model.input_type)
                    .map_err(chain)?
                    .into_owned()
            };
            let outputs = model
                .plan
                .run(tvec![input.into_tvalue()])
                .map_err(|e| format!("model run failed: {}", chain(e)))?;
            let probabilities = outputs[0].cast_to::<f32>().map_err(chain)?;
            if probabilities.shape() != [chunk.nrows(), classes] {
                return Err(format!(
                    "the model gave probabilities of shape {:?} for {} rows, expected [{}, {classes}]",
                    probabilities.shape(),
                    chunk.nrows(),
                    chunk.nrows()
                )
                .into());
            }
            out.extend_from_slice(probabilities.as_slice::<f32>().map_err(chain)?);
        }
        Ok(Array2::from_shape_vec((n, classes), out)?)
    }
}

/// A fact as `float32 [N, 4]`, for error messages.
fn describe(fact: &InferenceFact) -> String {
    let dt = fact
        .datum_type
        .concretize()
        .map_or_else(|| "?".to_owned(), |dt| format!("{dt:?}"));
    format!("{dt} {:?}", fact.shape)
}

/// The message the `Model` deployment answers (`handle.remote(Predict(rows))`): the class
/// probabilities of each row, `[n, classes]`, as [`OnnxModel::predict`] computes them.
#[derive(Debug, Clone, PartialEq)]
pub struct Predict(pub Array2<f32>);

impl Handles<Predict> for OnnxModel {
    type Output = Result<Array2<f32>, BoxError>;

    /// Runs the model on the blocking thread pool, so a long run does not hold up other requests
    /// on this worker. Cancel safe: when the call is dropped, the run stops before its next
    /// chunk of `max_batch_size` rows.
    async fn call(&self, Predict(rows): Predict) -> Self::Output {
        let model = self.clone();
        let ctx = ferroserve::current();
        let cancelled = move || ctx.as_ref().is_some_and(|ctx| ctx.is_cancelled());
        tokio::task::spawn_blocking(move || model.predict_until(rows.view(), cancelled))
            .await
            .map_err(|e| format!("model run failed: {e}"))?
    }
}

/// What `POST /predict` answers: for each input row, the most probable class and every
/// class's probability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Prediction {
    /// The most probable class of each row.
    pub labels: Vec<String>,
    /// Each row's class probabilities, in the order of the model's `labels` (`GET /`).
    pub probabilities: Vec<Vec<f32>>,
}

/// What `GET /` answers: the served model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ModelInfo {
    /// The model file's name.
    pub model: String,
    /// The number of features of one input row.
    pub inputs: usize,
    /// The class names, in the order of each row of `probabilities` (`POST /predict`).
    pub labels: Vec<String>,
}

/// The ingress: validates rows, asks `Model`, names the classes.
struct Preprocess {
    model: DeploymentHandle<OnnxModel>,
    info: ModelInfo,
    max_rows: usize,
}

/// A failure of `POST /predict`: bad input (422), or the model call failed (the proxy's usual
/// answer for the error: 500 with the detail logged, 503 on backpressure, ...).
enum PredictError {
    Invalid(ValidationError),
    Failed(Error),
}

impl axum::response::IntoResponse for PredictError {
    fn into_response(self) -> axum::response::Response {
        match self {
            PredictError::Invalid(e) => e.into_response(),
            PredictError::Failed(e) => e.into_response(),
        }
    }
}

impl aide::OperationOutput for PredictError {
    type Inner = ();
}

/// The rows of a `json_to_ndarray` array as `[n, features]` `f32`: a 2-D array of `features`
/// columns, or one row of `features` values; numbers, finite as `f32`; 1 to `max_rows` rows.
fn rows_of(
    array: &DynArray,
    features: usize,
    max_rows: usize,
) -> Result<Array2<f32>, ValidationError> {
    let invalid = |kind: &str, msg: String| {
        ValidationError::one(kind, vec!["body".into(), "array".into()], msg, Value::Null)
    };
    let shape = array.shape();
    let rows = match *shape {
        [0] | [0, _] => {
            return Err(invalid(
                "too_short",
                format!(
                    "expected at least one row of {features} features, got an empty array \
                     (shape {shape:?})"
                ),
            ))
        }
        [n, f] if f == features => n,
        [f] if f == features => 1,
        _ => {
            return Err(invalid(
                "value_error",
                format!("expected shape [n, {features}] (or one row of {features}), got {shape:?}"),
            ))
        }
    };
    // An empty list is inferred as bool: the checks above answer it.
    if array.dtype() == "bool" {
        return Err(invalid(
            "type_error",
            format!("expected numbers, got booleans (dtype bool, shape {shape:?})"),
        ));
    }
    if rows > max_rows {
        return Err(invalid(
            "too_long",
            format!("expected at most {max_rows} rows, got {rows}"),
        ));
    }
    let mut values = Vec::with_capacity(rows * features);
    for (i, x) in array.to_f64().into_iter().enumerate() {
        let y = x as f32;
        if !y.is_finite() {
            // Printed as JSON prints it: `1e300`, not 301 digits.
            let x = Value::from(x);
            let msg = format!(
                "element [{}, {}] ({x}) is not a finite float32",
                i / features,
                i % features
            );
            let mut e = invalid("finite_number", msg);
            e.detail[0].input = x;
            return Err(e);
        }
        values.push(y);
    }
    Array2::from_shape_vec((rows, features), values)
        .map_err(|e| invalid("value_error", format!("cannot build the rows: {e}")))
}

impl Preprocess {
    async fn info(State(this): State<Arc<Self>>) -> Json<ModelInfo> {
        Json(this.info.clone())
    }

    async fn predict(
        State(this): State<Arc<Self>>,
        JsonToNdarray(array): JsonToNdarray,
    ) -> Result<Json<Prediction>, PredictError> {
        let rows =
            rows_of(&array, this.info.inputs, this.max_rows).map_err(PredictError::Invalid)?;
        drop(array);
        let probabilities = this
            .model
            .remote(Predict(rows))
            .await
            .map_err(PredictError::Failed)?
            .map_err(|e| {
                PredictError::Failed(Error::Deployment {
                    deployment: this.model.deployment_name().to_owned(),
                    detail: e.to_string(),
                })
            })?;
        Ok(Json(prediction(&probabilities, &this.info.labels)))
    }
}

/// The most probable label and the probabilities of each row.
fn prediction(probabilities: &Array2<f32>, labels: &[String]) -> Prediction {
    let best = |row: ArrayView1<'_, f32>| {
        let mut best = 0;
        for (i, &p) in row.iter().enumerate() {
            if p > row[best] {
                best = i;
            }
        }
        labels
            .get(best)
            .cloned()
            .unwrap_or_else(|| best.to_string())
    };
    Prediction {
        labels: probabilities.rows().into_iter().map(best).collect(),
        probabilities: probabilities
            .rows()
            .into_iter()
            .map(|r| r.to_vec())
            .collect(),
    }
}

impl ApiIngress for Preprocess {
    fn routes() -> ApiRouter<Arc<Self>> {
        ApiRouter::new()
            .api_route(
                "/",
                get_with(Self::info, |op| {
                    op.summary("The served model").description(
                        "The model file, the number of features per row, and the class names.",
                    )
                }),
            )
            .api_route(
                "/predict",
                post_with(Self::predict, |op| {
                    op.summary("Classify rows").description(
                        "`array` holds rows of features, `[n, features]` (or one row); the answer \
                         gives each row's most probable class and every class's probability. \
                         Bad shapes, non-numbers and too many rows are a 422.",
                    )
                }),
            )
    }
}

/// The application serving `args`: deployments `"Preprocess"` (the ingress, see the module
/// docs) and `"Model"` (an [`OnnxModel`]), one replica each, named `"default"` at `/` until
/// [`Application::name`] and [`Application::route_prefix`] say otherwise.
///
/// Loads the model once to check `args` and learn its features and labels (blocking): a bad
/// model or argument is [`Error::Config`] naming the file. Each `Model` replica then loads its own
/// copy in its constructor (on the blocking thread pool) when the application starts; a failure
/// there, or a model whose features or classes changed meanwhile, fails start-up with
/// [`Error::Startup`] naming `Model`.
pub fn app(args: OnnxArgs) -> Result<Application, Error> {
    let probe = OnnxModel::load(&args).map_err(|e| Error::Config(e.to_string()))?;
    let info = ModelInfo {
        model: args.model_name(),
        inputs: probe.num_features(),
        labels: probe.labels().to_vec(),
    };
    drop(probe);
    let max_rows = args.max_rows;
    let expected = info.clone();
    let model = Deployment::new("Model").bind_async(move || {
        let args = args.clone();
        let expected = expected.clone();
        async move {
            let model = tokio::task::spawn_blocking(move || OnnxModel::load(&args)).await??;
            if model.num_features() != expected.inputs || model.labels() != expected.labels {
                return Err(format!(
                    "the model '{}' changed since the application was built: it now takes {} \
                     features and has classes {:?} (was {} and {:?})",
                    model.path().display(),
                    model.num_features(),
                    model.labels(),
                    expected.inputs,
                    expected.labels
                )
                .into());
            }
            Ok::<_, BoxError>(model)
        }
    });
    let preprocess = Deployment::new("Preprocess")
        .with(model)
        .bind(move |model| Preprocess {
            model,
            info: info.clone(),
            max_rows,
        });
    Ok(Application::api(preprocess))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const IRIS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../apps/iris");

    fn expected() -> Value {
        let text = std::fs::read_to_string(format!("{IRIS}/expected.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    fn iris_args() -> OnnxArgs {
        let labels: Vec<String> = serde_json::from_value(expected()["labels"].clone()).unwrap();
        OnnxArgs::new(format!("{IRIS}/iris.onnx")).labels(labels)
    }

    fn load_err(args: &OnnxArgs) -> String {
        OnnxModel::load(args).unwrap_err().to_string()
    }

    fn expected_rows() -> (Array2<f32>, Array2<f32>) {
        let e = expected();
        let rows: Vec<Vec<f32>> = serde_json::from_value(e["rows"].clone()).unwrap();
        let probs: Vec<Vec<f32>> = serde_json::from_value(e["probabilities"].clone()).unwrap();
        let to2 = |v: Vec<Vec<f32>>| {
            let (n, m) = (v.len(), v[0].len());
            Array2::from_shape_vec((n, m), v.concat()).unwrap()
        };
        (to2(rows), to2(probs))
    }

    fn assert_close(got: &Array2<f32>, want: &Array2<f32>) {
        assert_eq!(got.dim(), want.dim());
        for ((i, g), w) in got.indexed_iter().zip(want.iter()) {
            assert!((g - w).abs() <= 1e-4, "at {i:?}: got {g}, expected {w}");
        }
    }

    #[test]
    fn model_is_send_sync_and_cheap_to_clone() {
        fn check<T: Send + Sync + Clone + 'static>() {}
        check::<OnnxModel>();
    }

    #[test]
    fn a_missing_file_is_named() {
        let msg = load_err(&OnnxArgs::new("no/such/model.onnx"));
        assert!(
            msg.starts_with("cannot load ONNX model 'no/such/model.onnx': No such file"),
            "{msg}"
        );
    }

    #[test]
    fn a_file_that_is_not_onnx_is_named() {
        let path =
            std::env::temp_dir().join(format!("ferroserve-not-onnx-{}.onnx", std::process::id()));
        std::fs::write(&path, b"this is not a protobuf model").unwrap();
        let msg = load_err(&OnnxArgs::new(&path));
        std::fs::remove_file(&path).unwrap();
        assert!(
            msg.starts_with(&format!("cannot load ONNX model '{}': ", path.display())),
            "{msg}"
        );
    }

    #[test]
    fn label_count_must_match_the_classes() {
        let msg = load_err(&iris_args().labels(["setosa", "versicolor"]));
        assert!(msg.starts_with("cannot load ONNX model '"), "{msg}");
        assert!(msg.contains("iris.onnx"), "{msg}");
        assert!(
            msg.ends_with("labels has 2 names but output 'probabilities' has 3 classes"),
            "{msg}"
        );
    }

    #[test]
    fn unknown_input_and_output_names_list_the_real_ones() {
        let args = OnnxArgs {
            input_name: Some("pixels".into()),
            ..iris_args()
        };
        let msg = load_err(&args);
        assert!(
            msg.ends_with(r#"it has no input named 'pixels' (inputs: ["input"])"#),
            "{msg}"
        );
        let args = OnnxArgs {
            output_name: Some("logits".into()),
            ..iris_args()
        };
        let msg = load_err(&args);
        assert!(
            msg.ends_with(
                r#"it has no output or tensor named 'logits' (outputs: ["probabilities"])"#
            ),
            "{msg}"
        );
    }

    #[test]
    fn zero_limits_are_rejected() {
        let args = OnnxArgs {
            max_batch_size: 0,
            ..iris_args()
        };
        assert!(load_err(&args).ends_with("max_batch_size must be at least 1, got 0"));
        let args = OnnxArgs {
            max_rows: 0,
            ..iris_args()
        };
        assert!(load_err(&args).ends_with("max_rows must be at least 1, got 0"));
    }

    #[test]
    fn loads_features_and_default_labels_from_the_model() {
        let model = OnnxModel::load(&OnnxArgs::new(format!("{IRIS}/iris.onnx"))).unwrap();
        assert_eq!(model.num_features(), 4);
        assert_eq!(model.labels(), ["0", "1", "2"]);
        // Named explicitly, the same input and output.
        let args = OnnxArgs {
            input_name: Some("input".into()),
            output_name: Some("probabilities".into()),
            ..iris_args()
        };
        assert_eq!(OnnxModel::load(&args).unwrap().num_features(), 4);
    }

    #[test]
    fn predict_matches_scikit_learn() {
        let (rows, want) = expected_rows();
        let model = OnnxModel::load(&iris_args()).unwrap();
        assert_close(&model.predict(rows.view()).unwrap(), &want);
        let got = prediction(&model.predict(rows.view()).unwrap(), model.labels());
        assert_eq!(json!(got.labels), expected()["predicted"]);
    }

    #[test]
    fn predict_splits_rows_into_batches_of_max_batch_size() {
        let (rows, want) = expected_rows();
        for max_batch_size in [1, 4, 6, 7] {
            let args = OnnxArgs {
                max_batch_size,
                ..iris_args()
            };
            let model = OnnxModel::load(&args).unwrap();
            assert_close(&model.predict(rows.view()).unwrap(), &want);
        }
        // A view that is not contiguous (every other row) is copied, not misread.
        let model = OnnxModel::load(&iris_args()).unwrap();
        let every_other = ndarray::Slice::new(0, None, 2);
        let odd = rows.slice_axis(Axis(0), every_other);
        assert!(odd.as_slice().is_none());
        let want_odd = want.slice_axis(Axis(0), every_other).to_owned();
        assert_close(&model.predict(odd).unwrap(), &want_odd);
        let none = model
            .predict(rows.slice_axis(Axis(0), ndarray::Slice::new(0, Some(0), 1)))
            .unwrap();
        assert_eq!(none.dim(), (0, 3));
    }

    #[test]
    fn predict_checks_columns_and_stops_when_cancelled() {
        let model = OnnxModel::load(&iris_args()).unwrap();
        let three = Array2::<f32>::zeros((2, 3));
        assert_eq!(
            model.predict(three.view()).unwrap_err().to_string(),
            "expected shape [n, 4], got [2, 3]"
        );
        let rows = Array2::<f32>::zeros((2, 4));
        let err = model.predict_until(rows.view(), || true).unwrap_err();
        assert_eq!(err.to_string(), "cancelled");
    }

    fn dyn_array(body: Value) -> DynArray {
        serde_json::from_value::<ferroserve::adapters::NdArray>(body)
            .unwrap()
            .into_dyn()
            .unwrap()
    }

    fn rows_err(body: Value) -> (String, String) {
        let e = rows_of(&dyn_array(body), 4, 3).unwrap_err();
        let d = &e.detail[0];
        assert_eq!(d.loc, vec![json!("body"), json!("array")]);
        (d.kind.clone(), d.msg.clone())
    }

    #[test]
    fn rows_must_be_n_by_features_finite_numbers() {
        let rows = rows_of(&dyn_array(json!({"array": [[1, 2, 3, 4.5]]})), 4, 3).unwrap();
        assert_eq!(rows, ndarray::array![[1.0, 2.0, 3.0, 4.5]]);
        let one = rows_of(&dyn_array(json!({"array": [1, 2, 3, 4]})), 4, 3).unwrap();
        assert_eq!(one.dim(), (1, 4));
        let reshaped = rows_of(
            &dyn_array(json!({"array": [1, 2, 3, 4, 5, 6, 7, 8], "shape": [2, 4]})),
            4,
            3,
        )
        .unwrap();
        assert_eq!(reshaped.dim(), (2, 4));

        let cases = [
            (
                json!({"array": [[1, 2, 3], [4, 5, 6]]}),
                "value_error",
                "expected shape [n, 4] (or one row of 4), got [2, 3]",
            ),
            (
                json!({"array": [[[1, 2, 3, 4]]]}),
                "value_error",
                "expected shape [n, 4] (or one row of 4), got [1, 1, 4]",
            ),
            (
                json!({"array": 5}),
                "value_error",
                "expected shape [n, 4] (or one row of 4), got []",
            ),
            (
                json!({"array": []}),
                "too_short",
                "expected at least one row of 4 features, got an empty array (shape [0])",
            ),
            (
                json!({"array": [[true, false, true, true]]}),
                "type_error",
                "expected numbers, got booleans (dtype bool, shape [1, 4])",
            ),
            (
                json!({"array": [[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4]]}),
                "too_long",
                "expected at most 3 rows, got 4",
            ),
            (
                json!({"array": [[1, 2, 3, 4], [1, 2, 1e300, 4]]}),
                "finite_number",
                "element [1, 2] (1e+300) is not a finite float32",
            ),
        ];
        for (body, kind, msg) in cases {
            assert_eq!(
                rows_err(body.clone()),
                (kind.to_owned(), msg.to_owned()),
                "{body}"
            );
        }
    }

    #[test]
    fn args_default_and_reject_unknown_fields() {
        let args: OnnxArgs = serde_json::from_value(json!({"model_path": "m.onnx"})).unwrap();
        assert_eq!(args, OnnxArgs::new("m.onnx"));
        assert_eq!((args.max_batch_size, args.max_rows), (256, 10_000));
        let err = serde_json::from_value::<OnnxArgs>(json!({"model_path": "m.onnx", "batch": 2}))
            .unwrap_err();
        assert!(
            err.to_string().starts_with("unknown field `batch`"),
            "{err}"
        );
        assert!(serde_json::from_value::<OnnxArgs>(json!({})).is_err());
    }

    #[test]
    fn model_failures_take_the_usual_error_path() {
        use axum::response::IntoResponse;
        let failed = PredictError::Failed(Error::Deployment {
            deployment: "Model".into(),
            detail: "model run failed: boom".into(),
        });
        let response = failed.into_response();
        assert_eq!(response.status(), http::StatusCode::INTERNAL_SERVER_ERROR);
        let invalid =
            PredictError::Invalid(rows_of(&dyn_array(json!({"array": []})), 4, 3).unwrap_err());
        assert_eq!(
            invalid.into_response().status(),
            http::StatusCode::UNPROCESSABLE_ENTITY
        );
    }

    #[test]
    fn the_app_fails_to_build_on_a_bad_model() {
        let err = app(OnnxArgs::new("missing/iris.onnx")).unwrap_err();
        assert!(matches!(err, Error::Config(_)));
        assert!(err.to_string().contains("'missing/iris.onnx'"), "{err}");
    }
}
