# /// script
# requires-python = ">=3.10"
# dependencies = ["modal>=1.6", "runtimeuse-client==0.15.1", "boto3"]
# ///
"""runtimeuse on Modal: an image with the runtime installed from PyPI, a
sandbox running it, one query whose report is uploaded to S3.

    modal token new; ARTIFACT_BUCKET=my-bucket uv run examples/modal_sandbox.py

With OPENAI_API_KEY set the query goes to the bundled OpenAI agent (the key
travels with the query, redacted, never baked into the image); without it,
to the echo agent. Modal builds the image once and caches it.
"""
import asyncio
import os
import secrets
import time
import urllib.request

import boto3
import modal
from runtimeuse_client import ArtifactUploadResult, QueryOptions, RuntimeUseClient

PORT = 8080
OUT_DIR = "/tmp/out"

# Node for the bundled agents, Python for pip; the wheel carries the static
# runtime binary and puts it on PATH.
image = modal.Image.from_registry("node:22-bookworm-slim", add_python="3.12").pip_install("runtimeuse")


def wait_healthy(base_url: str, timeout: float = 30.0) -> None:
    """Waits until the runtime answers GET /health (no token needed)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{base_url}/health", timeout=5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


async def upload_url(request) -> ArtifactUploadResult:
    """A presigned S3 PUT URL for each file the runtime announces."""
    key = f"runtimeuse/{request.filename}"
    url = boto3.client("s3").generate_presigned_url(
        "put_object",
        Params={"Bucket": os.environ["ARTIFACT_BUCKET"], "Key": key, "ContentType": "text/markdown"},
        ExpiresIn=600,
    )
    return ArtifactUploadResult(presigned_url=url, content_type="text/markdown")


async def query(ws_url: str, agent: str) -> None:
    key = os.environ.get("OPENAI_API_KEY", "")
    prompt = (
        f"WRITE_FILE:{OUT_DIR}/report.md # Hello from Modal"
        if agent == "echo"
        else f"Write a three-line report on this machine (uname -a) to {OUT_DIR}/report.md"
    )
    options = QueryOptions(
        system_prompt="You are a careful assistant.",
        model="gpt-4.1-mini",
        agent_env={"OPENAI_API_KEY": key} if key else None,
        secrets_to_redact=[key] if key else [],
        artifacts_dirs=[OUT_DIR],
        on_artifact_upload_request=upload_url,
    )
    result = await RuntimeUseClient(ws_url=ws_url).query(prompt, options)
    print("result:", result.data)


def main() -> None:
    agent = "openai" if os.environ.get("OPENAI_API_KEY") else "echo"
    token = secrets.token_urlsafe(32)
    app = modal.App.lookup("runtimeuse-example", create_if_missing=True)
    sandbox = modal.Sandbox.create(
        "runtimeuse", "--agent", agent, "--port", str(PORT),
        app=app,
        image=image,
        secrets=[modal.Secret.from_dict({"RUNTIMEUSE_AUTH_TOKEN": token})],
        encrypted_ports=[PORT],
        readiness_probe=modal.Probe.with_tcp(PORT),
        timeout=600,
    )
    try:
        sandbox.wait_until_ready()
        host = sandbox.tunnels()[PORT].host
        wait_healthy(f"https://{host}")
        asyncio.run(query(f"wss://:{token}@{host}", agent))
    finally:
        sandbox.terminate()


if __name__ == "__main__":
    main()
