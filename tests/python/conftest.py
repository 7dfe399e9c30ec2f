"""Starts ferroserve examples on ephemeral ports for the Python client code of Ray Serve's
HTTP guide."""

import os
import pathlib
import queue
import subprocess
import threading
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
TARGET = pathlib.Path(
    os.environ.get("CARGO_TARGET_DIR", pathlib.Path.home() / ".cache" / "ferroserve-target")
)


class Example:
    """A running example (or, with `args`, the `ferroserve` CLI run from the repository root):
    its base URL and the lines it prints on stdout."""

    def __init__(self, name, args=()):
        binary = TARGET / "debug" / ("examples" if not args else "") / name
        assert binary.exists(), f"{binary} missing: run `cargo build --workspace --bins --examples` first"
        env = dict(os.environ, FERROSERVE_PORT="0", FERROSERVE_ADMIN_PORT="0", RUST_LOG="info")
        self.proc = subprocess.Popen(
            [str(binary), *args],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines = queue.Queue()
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines), daemon=True).start()
        self.base = None
        for line in self.proc.stderr:
            if "listening on " in line:
                self.base = line.split("listening on ", 1)[1].strip()
                break
        assert self.base, "example printed its listening address"
        threading.Thread(target=self._drain, args=(self.proc.stderr,), daemon=True).start()

    @staticmethod
    def _pump(stream, q):
        for line in stream:
            q.put((time.monotonic(), line.rstrip("\n")))

    @staticmethod
    def _drain(stream):
        for _ in stream:
            pass

    def next_line(self, timeout=10.0):
        """(monotonic time it arrived, text) of the next printed line."""
        return self.lines.get(timeout=timeout)

    def stop(self):
        self.proc.terminate()
        assert self.proc.wait(timeout=30) == 0


@pytest.fixture
def example():
    started = []

    def start(name, *args):
        ex = Example(name, args)
        started.append(ex)
        return ex

    yield start
    for ex in started:
        if ex.proc.poll() is None:
            ex.proc.kill()
            ex.proc.wait()
