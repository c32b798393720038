# /// script
# requires-python = ">=3.10"
# dependencies = ["vercel-sandbox>=0.10", "runtimeuse-client==0.15.1", "boto3"]
# ///
"""runtimeuse on Vercel Sandbox: a snapshot with the runtime installed from
npm, a sandbox started from it, one query whose report is uploaded to S3.

    vercel env pull; ARTIFACT_BUCKET=my-bucket uv run examples/vercel_sandbox.py

With OPENAI_API_KEY set the query goes to the bundled OpenAI agent (the key
travels with the query, redacted, never baked into the image); without it,
to the echo agent.
The snapshot is the template: set RUNTIMEUSE_SNAPSHOT to its id to skip
building it again.
"""
import asyncio
import os
import secrets
import subprocess
import time
import urllib.parse
import urllib.request

import boto3
from runtimeuse_client import ArtifactUploadResult, QueryOptions, RuntimeUseClient
from vercel.sandbox.sync import SnapshotSource, SyncSandboxClient

PORT = 8080
OUT_DIR = "/tmp/out"


def build_snapshot(client: SyncSandboxClient) -> str:
    """A sandbox with the runtime installed from npm, kept as a snapshot."""
    with client.create_sandbox(destroy=False) as builder:
        builder.run_process("npm", ["install", "-g", "runtimeuse"], sudo=True, check=True)
        snapshot = builder.snapshot()
    print("snapshot:", snapshot.id)
    return snapshot.id


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
        f"WRITE_FILE:{OUT_DIR}/report.md # Hello from Vercel"
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
    client = SyncSandboxClient.create()
    try:
        snapshot_id = os.environ.get("RUNTIMEUSE_SNAPSHOT") or build_snapshot(client)
        source = SnapshotSource(snapshot_id=snapshot_id)
        with client.create_sandbox(source=source, ports=[PORT], execution_time_limit=600) as sandbox:
            sandbox.create_process(
                "runtimeuse",
                ["--agent", agent, "--port", str(PORT)],
                env={"RUNTIMEUSE_AUTH_TOKEN": token},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            route = urllib.parse.urlsplit(next(r.url for r in sandbox.routes if r.port == PORT))
            wait_healthy(f"https://{route.netloc}")
            asyncio.run(query(f"wss://:{token}@{route.netloc}", agent))
    finally:
        client.close()


if __name__ == "__main__":
    main()
