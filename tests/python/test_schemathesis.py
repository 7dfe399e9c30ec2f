"""Schemathesis fuzzes each example from its own OpenAPI document: no answer may be a 5xx."""

import shutil
import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "name,prefix,headers",
    [
        ("fastapi_hello", "/hello", []),
        ("fastapi_multi_routes", "/hello", []),
        ("byo_router", "", []),
        ("fastapi_users", "/api", ["-H", "x-api-key: secret"]),
    ],
)
def test_no_server_errors(example, name, prefix, headers):
    ex = example(name)
    st = shutil.which("schemathesis") or shutil.which("st")
    cmd = [st] if st else [sys.executable, "-m", "schemathesis.cli"]
    result = subprocess.run(
        cmd
        + [
            "run",
            f"{ex.base}{prefix}/openapi.json",
            "--url",
            f"{ex.base}{prefix}",
            "--checks",
            "not_a_server_error",
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
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "passed" in result.stdout
