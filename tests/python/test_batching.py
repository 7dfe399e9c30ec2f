"""Ray's batching client code (concurrent `requests` from a thread pool) against the
`batching` example: every caller gets its own text back, and the replica ran batches."""

from concurrent.futures import ThreadPoolExecutor

import requests


def test_concurrent_queries_are_batched(example):
    ex = example("batching")
    texts = [f"text {i}" for i in range(16)]

    def send_query(text):
        response = requests.get(ex.base, params={"text": text})
        assert response.status_code == 200, response.text
        return response.text

    with ThreadPoolExecutor(max_workers=16) as executor:
        results = list(executor.map(send_query, texts))
    assert results == [f"{text}, generated" for text in texts]

    sizes = []
    while sum(sizes) < len(texts):
        line = ex.next_line()[1]
        prefix = "Our input array has length: "
        assert line.startswith(prefix), line
        sizes.append(int(line[len(prefix):]))
    assert sum(sizes) == len(texts), sizes
    assert all(n <= 4 for n in sizes), sizes
    assert max(sizes) > 1, sizes
    ex.stop()
