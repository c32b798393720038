"""The trivial handler of the one-shot figure as a user of the Python SDK
writes it: an `async def` answering every invocation with its prompt (agent
SDKs are async). Its cost is the interpreter's plus the SDK's."""
from runtimeuse_handler import run_handler


async def handle(invocation, ctx):
    return {"text": invocation.user_prompt}


run_handler(handle)
