"""Schemathesis fuzzes every example (and app) that serves an OpenAPI document, from that
document: no answer may be a 5xx, every status must be one the document declares, and every
body must match the schema declared for its status."""

import shutil
import subprocess
import sys

import pytest

CHECKS = "not_a_server_error,status_code_conformance,response_schema_conformance"


def schemathesis(base, prefix, headers):
    st = shutil.which("schemathesis") or shutil.which("st")
    cmd = [st] if st else [sys.executable, "-m", "schemathesis.cli"]
    return subprocess.run(
        cmd
        + [
            "run",
            f"{base}{prefix}/openapi.json",
            "--url",
            f"{base}{prefix}",
            "--checks",
            CHECKS,
            "--max-examples",
            "50",
            "--seed",
            "1",
        ]
        + headers,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    "name,prefix,headers",
    [
        ("fastapi_hello", "/hello", []),
        ("fastapi_multi_routes", "/hello", []),
        ("byo_router", "", []),
        ("fastapi_users", "/api", ["-H", "x-api-key: secret"]),
        ("adapters", "", []),
        ("dag_ndarray", "", []),
        ("sse_tokens", "", []),
        ("websocket_echo", "", []),
    ],
)
def test_examples_conform_to_their_documents(example, name, prefix, headers):
    ex = example(name)
    result = schemathesis(ex.base, prefix, headers)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "passed" in result.stdout


def test_iris_app_conforms_to_its_document(example):
    """The ONNX iris classifier, served from its config by the CLI (`ferroserve run`)."""
    ex = example("ferroserve", "run", "apps/iris/serve.yaml")
    result = schemathesis(ex.base, "/iris", [])
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "passed" in result.stdout
