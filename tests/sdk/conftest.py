"""Starts `tollgate dev` on free loopback ports for the SDK tests and stops it by its PID."""

import json
import os
import signal
import socket
import subprocess
import threading
import urllib.request

import openai
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("TOLLGATE_BIN", os.path.join(ROOT, "target", "debug", "tollgate"))
READY_TIMEOUT_S = 120


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def dev():
    ports = [free_port() for _ in range(4)]
    cmd = [
        BIN, "dev", "--output", "json",
        "--store-listen", f"127.0.0.1:{ports[0]}",
        "--gateway-listen", f"127.0.0.1:{ports[1]}",
        "--upstream-listen", f"127.0.0.1:{ports[2]},127.0.0.1:{ports[3]}",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = {}

    def read_first_line():
        line["v"] = proc.stdout.readline()

    reader = threading.Thread(target=read_first_line, daemon=True)
    reader.start()
    reader.join(READY_TIMEOUT_S)
    if not line.get("v"):
        proc.kill()
        raise RuntimeError("tollgate dev did not become ready: " + proc.stderr.read()[-4000:])
    info = json.loads(line["v"])
    try:
        yield info
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, f"tollgate dev exited with {proc.returncode}"


def control(base, path, body=None):
    """Calls a simulated upstream's control endpoint."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method="POST" if data else "GET")
    req.add_header("content-type", "application/json")
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


HEALTHY = {"down": False, "fail_rate": 0.0, "stall_after_tokens": None, "drop_after_tokens": None,
           "tokens_per_sec": 0, "ttft_ms": 0}


@pytest.fixture(autouse=True)
def healthy_upstreams(dev):
    for u in dev["upstreams"]:
        control(u, "/mock/behavior", HEALTHY)
    yield
    for u in dev["upstreams"]:
        control(u, "/mock/behavior", HEALTHY)


@pytest.fixture
def client(dev):
    return openai.OpenAI(base_url=dev["gateway_url"], api_key=dev["api_key"], max_retries=0,
                         timeout=30)
