"""Starts TensorZero's embedded Rust gateway with one OpenAI-compatible model pointing at the
simulated upstream on 127.0.0.1:<port>; prints its base URL and runs until killed."""

import os
import sys
import tempfile
import time

import tensorzero

CONFIG = """
[gateway]
observability.enabled = false

[models.demo]
routing = ["mock"]

[models.demo.providers.mock]
type = "openai"
model_name = "demo-chat"
api_base = "http://127.0.0.1:{port}/v1/"
api_key_location = "none"
"""

path = os.path.join(tempfile.mkdtemp(), "tensorzero.toml")
with open(path, "w") as f:
    f.write(CONFIG.format(port=sys.argv[1]))
gateway = tensorzero._start_http_gateway(config_file=path, clickhouse_url=None, postgres_url=None,
                                         valkey_url=None, async_setup=False)
print(gateway.base_url, flush=True)
while True:
    time.sleep(3600)
