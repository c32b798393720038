# /// script
# requires-python = ">=3.10"
# dependencies = ["e2b>=2.63", "runtimeuse-client==0.15.1", "boto3"]
# ///
"""runtimeuse on E2B: a template with the runtime installed from npm, a
sandbox started from it, one query whose report is uploaded to S3.

    E2B_API_KEY=... ARTIFACT_BUCKET=my-bucket uv run examples/e2b_sandbox.py

With OPENAI_API_KEY set the query goes to the bundled OpenAI agent (the key
travels with the query, redacted, never baked into the template); without
it, to the echo agent. Building the template takes a minute the first time
and is cached after that.
"""
import asyncio
import os
import secrets
import time
import urllib.request

import boto3
from e2b import Sandbox, Template, default_build_logger
from runtimeuse_client import ArtifactUploadResult, QueryOptions, RuntimeUseClient

TEMPLATE = "runtimeuse"
PORT = 8080
OUT_DIR = "/home/user/out"

# Node for the bundled agents; the runtime itself is a static binary that
# the npm package brings along.
template = Template().from_node_image("22").npm_install("runtimeuse", g=True)


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
        f"WRITE_FILE:{OUT_DIR}/report.md # Hello from E2B"
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
    Template.build(template, TEMPLATE, on_build_logs=default_build_logger())
    agent = "openai" if os.environ.get("OPENAI_API_KEY") else "echo"
    token = secrets.token_urlsafe(32)
    with Sandbox.create(TEMPLATE, timeout=600) as sandbox:
        sandbox.commands.run(
            f"runtimeuse --agent {agent} --port {PORT}",
            background=True,
            envs={"RUNTIMEUSE_AUTH_TOKEN": token},
        )
        host = sandbox.get_host(PORT)
        wait_healthy(f"https://{host}")
        asyncio.run(query(f"wss://:{token}@{host}", agent))


if __name__ == "__main__":
    main()
