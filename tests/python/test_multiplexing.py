"""Model multiplexing with the Ray docs' own client code: `requests` with the
`serve_multiplexed_model_id` header."""

import requests


def test_ray_docs_client_stays_on_the_replica_holding_the_model(example):
    ex = example("multiplexing")
    # The Ray docs' client: requests.get(url, headers={"serve_multiplexed_model_id": str("1")})
    first = requests.get(ex.base, headers={"serve_multiplexed_model_id": str("1")})
    assert first.status_code == 200
    body = first.json()
    assert body["model"] == "1"
    replica = body["replica"]
    assert replica in ("ModelInferencer#0", "ModelInferencer#1")
    for _ in range(10):
        again = requests.get(ex.base, headers={"serve_multiplexed_model_id": "1"}).json()
        assert again == body, "same model, same replica, same output"

    # Lines are printed in order, before each response: had model 1 been loaded again, that line
    # would come before model 2's.
    second = requests.get(ex.base, headers={"serve_multiplexed_model_id": "2"}).json()
    assert ex.next_line()[1] == f"{replica} loading model 1"
    assert ex.next_line()[1] == f"{second['replica']} loading model 2"

    missing = requests.get(ex.base)
    assert missing.status_code == 400
    assert missing.text == "This request names no model: set the serve_multiplexed_model_id header."
    ex.stop()
