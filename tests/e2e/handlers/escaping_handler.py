"""A handler that leaves something behind on purpose: for each invocation it
starts `sleep 300` in a new session (setsid, so outside its own process
group), writes that sleeper's pid to the file named by the prompt, and
answers. Used by test_containment.py to check that ending the handler ends
the escapee too."""
import json
import subprocess
import sys

for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("type") != "invoke":
        continue
    pid_file = msg["user_prompt"]
    sleeper = subprocess.Popen(
        ["sleep", "300"],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    with open(pid_file, "w") as f:
        f.write(str(sleeper.pid))
    sys.stdout.write(json.dumps({"type": "result", "id": msg["id"], "text": str(sleeper.pid)}) + "\n")
    sys.stdout.flush()
