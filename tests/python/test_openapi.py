"""The examples' OpenAPI documents are valid OpenAPI 3.1 and describe every route."""

import pytest
import requests
from openapi_spec_validator import validate


@pytest.mark.parametrize(
    "name,prefix,paths",
    [
        ("fastapi_hello", "/hello", ["/"]),
        ("fastapi_multi_routes", "/hello", ["/", "/{subpath}"]),
        ("byo_router", "", ["/"]),
        ("fastapi_users", "/api", ["/users", "/users/{user_id}"]),
        ("dag_ndarray", "", ["/"]),
        (
            "adapters",
            "",
            ["/dataframe", "/image", "/json", "/multi_ndarray", "/ndarray", "/raw", "/user"],
        ),
    ],
)
def test_document_is_valid_openapi_31(example, name, prefix, paths):
    ex = example(name)
    doc = requests.get(f"{ex.base}{prefix}/openapi.json").json()
    validate(doc)  # raises on any violation of the OpenAPI 3.1 schema
    assert doc["openapi"] == "3.1.0"
    assert sorted(doc["paths"]) == paths
