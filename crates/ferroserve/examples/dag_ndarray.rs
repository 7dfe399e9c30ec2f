//! The DAGDriver snippet of Ray Serve's HTTP guide: a `Model` that sums the array, behind a DAG
//! driver whose HTTP adapter is `json_to_ndarray`.
//!
//! ```sh
//! cargo run --example dag_ndarray
//! curl -X POST http://127.0.0.1:8000/ -H 'content-type: application/json' \
//!      -d '{"array": [[1, 2], [2, 3]]}'      # 8
//! ```

use ferroserve::adapters::{DynArray, JsonToNdarray};
use ferroserve::dag::{DagDriver, InputNode};
use ferroserve::{Deployment, Handles};
use serde_json::Value;

struct Model;

/// `Model.forward(array)`.
struct Forward(DynArray);

impl Handles<Forward> for Model {
    type Output = Value;

    async fn call(&self, Forward(array): Forward) -> Value {
        array.sum_value()
    }
}

fn main() -> Result<(), ferroserve::Error> {
    let model = Deployment::new("Model").bind(|| Model);
    // with InputNode() as input: dag = DAGDriver.bind(model.forward.bind(input), http_adapter=json_to_ndarray)
    let dag = InputNode::<JsonToNdarray>::new().call(&model, |JsonToNdarray(array)| Forward(array));
    ferroserve::run(DagDriver::new().route("/", dag).bind())
}
