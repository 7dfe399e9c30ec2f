"""The client code of Ray Serve's HTTP guide (Python `requests`), run unchanged against the
ferroserve examples."""

import time

import requests
from requests.exceptions import Timeout


def test_counter(example):
    ex = example("counter")
    assert requests.get(f"{ex.base}/?a=b&c=d").json() == {"a": "b", "c": "d"}
    ex.stop()


def test_basic_disconnect(example):
    ex = example("disconnect")
    try:
        requests.get(ex.base, timeout=0.5)
        raise AssertionError("the request should time out")
    except Timeout:
        print("Request timed out!")
    assert ex.next_line()[1] == "Replica received request!"
    assert ex.next_line()[1] == "Request got cancelled!"
    ex.stop()


def test_shielded_disconnect(example):
    ex = example("shielded_disconnect")
    began = time.monotonic()
    try:
        requests.get(ex.base, timeout=0.5)
        raise AssertionError("the request should time out")
    except Timeout:
        print("Request timed out!")
    assert ex.next_line()[1] == "SnoringSleeper received request!"
    assert ex.next_line()[1] == "SnoringSleeper's request was cancelled!"
    at, line = ex.next_line()
    assert line == "ZZZ"
    # The shielded snore still finishes, one second after the request began.
    assert 0.9 <= at - began < 3.0, at - began
    ex.stop()


def test_fastapi_hello(example):
    ex = example("fastapi_hello")
    resp = requests.get(f"{ex.base}/hello")
    assert resp.json() == "Hello, world!"


def test_fastapi_multi_routes(example):
    ex = example("fastapi_multi_routes")
    resp = requests.get(f"{ex.base}/hello")
    assert resp.json() == "Hello, world!"
    resp = requests.post(f"{ex.base}/hello/Serve")
    assert resp.json() == "Hello from Serve!"


def test_byo_router(example):
    ex = example("byo_router")
    resp = requests.get(f"{ex.base}/")
    assert resp.json() == "Hello from the root!"


def test_streaming(example):
    ex = example("streaming")
    r = requests.get(f"{ex.base}?max=10", stream=True)
    start = time.time()
    r.raise_for_status()
    got = []
    for chunk in r.iter_content(chunk_size=None, decode_unicode=True):
        print(f"Got result {round(time.time()-start, 1)}s after start: '{chunk}'")
        got.append((chunk, time.time() - start))
    assert [c for c, _ in got] == [str(i) for i in range(10)]
    # One chunk every 0.1 s, each arriving as it is produced.
    for i, (_, at) in enumerate(got):
        assert abs(at - 0.1 * i) < 0.08, got


def test_streaming_cancel(example):
    ex = example("streaming_cancel")
    r = requests.get(ex.base, stream=True)
    start = time.time()
    r.raise_for_status()
    for i, chunk in enumerate(r.iter_content(chunk_size=None, decode_unicode=True)):
        print(f"Got result {round(time.time()-start, 1)}s after start: '{chunk}'")
        if i == 10:
            print("Client disconnecting")
            break
    r.close()
    assert ex.next_line()[1] == "Cancelled! Exiting."


def test_websocket_echo(example):
    from websockets.sync.client import connect

    ex = example("websocket_echo")
    with connect(ex.base.replace("http://", "ws://")) as websocket:
        websocket.send("Eureka!")
        assert websocket.recv() == "Eureka!"
    assert ex.next_line()[1] == "Client disconnected."
