"""The HTTP adapters and the DAG driver with the clients users send from (`requests`, `files=`)."""

import struct
import zlib

import pytest
import requests


def png(width, height):
    """A valid RGB PNG, made with the standard library only."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(
        b"\x00" + bytes(v for x in range(width) for v in (x % 256, y % 256, 7)) for y in range(height)
    )
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def bomb(width, height):
    """Only a PNG header that claims `width x height` pixels."""
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr))


def test_dag_ndarray_guide_client(example):
    ex = example("dag_ndarray")
    resp = requests.post(f"{ex.base}/", json={"array": [[1, 2], [2, 3]]})
    assert resp.json() == 8
    assert requests.get(f"{ex.base}/", json={"array": [[1, 2], [2, 3]]}).json() == 8
    assert requests.post(f"{ex.base}/", json={"array": [[1, 2], [2]]}).status_code == 422


def test_image_upload_with_files(example):
    ex = example("adapters")
    resp = requests.post(f"{ex.base}/image", files={"img": ("cat.png", png(7, 5), "image/png")})
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"shape": [5, 7, 3]}
    resp = requests.post(f"{ex.base}/image", files={"img": ("bomb.png", bomb(60000, 60000), "image/png")})
    assert resp.status_code == 413
    resp = requests.post(f"{ex.base}/image", files={"img": ("notes.txt", b"hello", "text/plain")})
    assert resp.status_code == 422
    assert resp.json()["detail"][0]["loc"] == ["body", "img"]
    resp = requests.post(f"{ex.base}/image", files={"photo": ("cat.png", png(2, 2), "image/png")})
    assert resp.status_code == 422
    assert resp.json()["detail"][0]["type"] == "missing"


def test_ndarray_and_user(example):
    ex = example("adapters")
    resp = requests.post(f"{ex.base}/ndarray", json={"array": [[1, 2], [3, 4]], "dtype": "uint8"})
    assert resp.json() == {"shape": [2, 2], "dtype": "uint8", "sum": 10}
    resp = requests.post(f"{ex.base}/ndarray", json={"array": [[1, 2], [3, 4]], "shape": [3]})
    assert resp.status_code == 422
    assert resp.json()["detail"][0]["loc"] == ["body", "shape"]
    assert requests.post(f"{ex.base}/user", json={"user_id": 1, "user_name": "a"}).json() == {
        "user_id": 1,
        "user_name": "a",
    }
    assert requests.post(f"{ex.base}/user", json={"user_id": "x"}).status_code == 422


FRAMES = [
    ("records", [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]),
    ("split", {"columns": ["a", "b"], "index": [0, 1], "data": [[1, "x"], [2, "y"]]}),
    ("index", {"0": {"a": 1, "b": "x"}, "1": {"a": 2, "b": "y"}}),
    ("columns", {"a": {"0": 1, "1": 2}, "b": {"0": "x", "1": "y"}}),
    ("values", [[1, "x"], [2, "y"]]),
]


@pytest.mark.parametrize("orient,body", FRAMES)
def test_dataframe_every_orient(example, orient, body):
    ex = example("adapters")
    resp = requests.post(f"{ex.base}/dataframe", params={"orient": orient}, json=body)
    assert resp.status_code == 200, resp.text
    columns = ["0", "1"] if orient == "values" else ["a", "b"]
    assert resp.json() == {"columns": columns, "rows": 2}


def test_dataframe_lines_and_bad_options(example):
    ex = example("adapters")
    lines = '{"a": 1, "b": "x"}\n{"a": 2, "b": "y"}\n{"a": 3, "b": "z"}\n'
    resp = requests.post(f"{ex.base}/dataframe?lines=true", data=lines)
    assert resp.json() == {"columns": ["a", "b"], "rows": 3}
    for query, name in [("orient=table", "orient"), ("lines=perhaps", "lines"), ("dtype=int", "dtype")]:
        resp = requests.post(f"{ex.base}/dataframe?{query}", json=[])
        assert resp.status_code == 422, query
        assert resp.json()["detail"][0]["loc"] == ["query", name]
