# /// script
# requires-python = ">=3.10"
# dependencies = ["daytona>=0.226", "runtimeuse-client==0.15.1", "boto3"]
# ///
"""runtimeuse on Daytona: an image with the runtime installed from npm, a
sandbox created from it, one query whose report is uploaded to S3.

    DAYTONA_API_KEY=... ARTIFACT_BUCKET=my-bucket uv run examples/daytona_sandbox.py

With OPENAI_API_KEY set the query goes to the bundled OpenAI agent (the key
travels with the query, redacted, never baked into the image); without it,
to the echo agent. Daytona builds the image into a snapshot the first time and reuses it.
"""
import asyncio
import os
import secrets
import time
import urllib.parse
import urllib.request

import boto3
from daytona import CreateSandboxFromImageParams, Daytona, Image, SessionExecuteRequest
from runtimeuse_client import ArtifactUploadResult, QueryOptions, RuntimeUseClient

PORT = 8080
OUT_DIR = "/tmp/out"

# Node for the bundled agents; the runtime itself is a static binary that
# the npm package brings along.
image = Image.base("node:22-bookworm-slim").run_commands("npm install -g runtimeuse")


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
        f"WRITE_FILE:{OUT_DIR}/report.md # Hello from Daytona"
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
    daytona = Daytona()
    sandbox = daytona.create(
        CreateSandboxFromImageParams(image=image, env_vars={"RUNTIMEUSE_AUTH_TOKEN": token}),
        timeout=0,
        on_snapshot_create_logs=print,
    )
    try:
        sandbox.process.create_session("runtimeuse")
        sandbox.process.execute_session_command(
            "runtimeuse",
            SessionExecuteRequest(command=f"runtimeuse --agent {agent} --port {PORT}", run_async=True),
        )
        # A signed preview URL needs no Daytona header; the runtime's own
        # token goes in as URL credentials.
        preview = urllib.parse.urlsplit(sandbox.create_signed_preview_url(PORT, expires_in_seconds=3600).url)
        wait_healthy(f"https://{preview.netloc}{preview.path.rstrip('/')}")
        ws_url = preview._replace(scheme="wss", netloc=f":{token}@{preview.netloc}").geturl()
        asyncio.run(query(ws_url, agent))
    finally:
        daytona.delete(sandbox)


if __name__ == "__main__":
    main()
