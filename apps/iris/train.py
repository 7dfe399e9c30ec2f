"""Train the iris classifier that `ferroserve::onnx` serves, and write its test fixture.

Run from anywhere (needs `pip install scikit-learn skl2onnx onnx`; nothing is downloaded:
scikit-learn ships the iris data set):

    python3 apps/iris/train.py

It writes, next to this script:

* `iris.onnx`: an MLPClassifier (4 -> 16 ReLU -> 3 softmax) exported by skl2onnx, cut down
  to its probabilities output, so the graph holds only standard ONNX ops (Cast, MatMul, Add,
  Relu, Softmax, Identity; opset 17): float32 input `input` of shape [N, 4], float32 output
  `probabilities` of shape [N, 3], N dynamic. Class names are not in the graph; the server gets
  them from its arguments (`labels`), in the order of `expected.json`'s `labels`.
* `expected.json`: a few input rows with scikit-learn's `predict_proba` and predicted label
  names for them, which the Rust tests compare against (tolerance 1e-4).

Training is deterministic (fixed `random_state`), so re-running it gives the same files for
the same library versions.
"""

import json
from pathlib import Path

import numpy as np
import onnx
from onnx.reference import ReferenceEvaluator
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_iris
from sklearn.neural_network import MLPClassifier

HERE = Path(__file__).resolve().parent
INPUT = "input"
OUTPUT = "probabilities"
STANDARD_DOMAINS = ("", "ai.onnx")

ROWS = [
    [5.1, 3.5, 1.4, 0.2],  # iris[0], setosa
    [6.7, 3.0, 5.2, 2.3],  # iris[145], virginica
    [7.0, 3.2, 4.7, 1.4],  # iris[50], versicolor
    [5.9, 3.0, 4.2, 1.5],  # iris[61], versicolor
    [6.3, 2.8, 5.1, 1.5],  # iris[133], near the versicolor/virginica boundary
    [4.9, 2.5, 4.5, 1.7],  # iris[106], virginica
]


def train():
    iris = load_iris()
    model = MLPClassifier(
        hidden_layer_sizes=(16,),
        activation="relu",
        solver="lbfgs",
        alpha=1.0,  # L2 penalty: keeps the probabilities away from exact 0 and 1
        max_iter=5000,
        random_state=0,
    )
    model.fit(iris.data.astype(np.float32), iris.target)
    return iris, model


def export(model):
    onx = to_onnx(
        model,
        initial_types=[(INPUT, FloatTensorType([None, 4]))],
        options={id(model): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    # Keep only what computes the probabilities: drops the label branch (ArgMax and the
    # ai.onnx.ml ArrayFeatureExtractor) so that any standard ONNX runtime can run the graph.
    outputs = [o.name for o in onx.graph.output]
    probs = next(o for o in outputs if "prob" in o)
    extracted = onnx.utils.Extractor(onx).extract_model([INPUT], [probs])
    if probs != OUTPUT:
        for node in extracted.graph.node:
            node.output[:] = [OUTPUT if o == probs else o for o in node.output]
        extracted.graph.output[0].name = OUTPUT
    # Name the dynamic batch dimension (skl2onnx leaves it unnamed).
    for value in (extracted.graph.input[0], extracted.graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_param = "N"
    used = {node.domain for node in extracted.graph.node}
    assert used <= set(STANDARD_DOMAINS), f"non-standard ops left: {used}"
    kept = [op for op in extracted.opset_import if op.domain in STANDARD_DOMAINS]
    del extracted.opset_import[:]
    extracted.opset_import.extend(kept)
    extracted.producer_name = "ferroserve apps/iris/train.py"
    extracted.doc_string = "Iris MLPClassifier (scikit-learn), probabilities only."
    onnx.checker.check_model(extracted, full_check=True)
    return extracted


def to_json(value):
    """JSON with one line per key, and per row of a list of rows."""
    lines = []
    for key, item in value.items():
        if isinstance(item, list) and item and isinstance(item[0], list):
            rows = ",\n".join(f"    {json.dumps(row)}" for row in item)
            text = f"[\n{rows}\n  ]"
        else:
            text = json.dumps(item)
        lines.append(f"  {json.dumps(key)}: {text}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def main():
    iris, model = train()
    onx = export(model)
    path = HERE / "iris.onnx"
    onnx.save(onx, path)

    rows = np.array(ROWS, dtype=np.float32)
    proba = model.predict_proba(rows)
    predicted = [str(iris.target_names[i]) for i in model.predict(rows)]
    (onnx_proba,) = ReferenceEvaluator(onx).run(None, {INPUT: rows})
    assert onnx_proba.shape == (len(ROWS), 3), onnx_proba.shape
    assert np.allclose(onnx_proba, proba, atol=1e-5), (onnx_proba, proba)
    assert predicted[0] == "setosa" and predicted[1] == "virginica", predicted

    expected = {
        "model": path.name,
        "input_name": INPUT,
        "output_name": OUTPUT,
        "features": list(iris.feature_names),
        "labels": [str(n) for n in iris.target_names],
        "rows": ROWS,
        "probabilities": [[float(p) for p in row] for row in proba],
        "predicted": predicted,
        "train_accuracy": round(float(model.score(iris.data, iris.target)), 4),
    }
    (HERE / "expected.json").write_text(to_json(expected))
    ops = sorted({node.op_type for node in onx.graph.node})
    print(f"wrote {path} ({path.stat().st_size} bytes, ops {ops}) and expected.json")
    print(f"train accuracy {expected['train_accuracy']}, predicted {predicted}")


if __name__ == "__main__":
    main()
