"""The trivial Python handler of the one-shot figure: answers every invoke
with its prompt. Standard library only, so its cost is the interpreter's."""
import json
import sys

for line in sys.stdin:  # EOF: the runtime wants us gone
    message = json.loads(line)
    if message.get("type") != "invoke":
        continue
    reply = {"type": "result", "id": message["id"], "text": message["user_prompt"]}
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()
