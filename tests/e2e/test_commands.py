"""Shell commands: execute_commands, and pre/post agent commands."""
import time

import pytest
from runtimeuse_client import (
    AgentRuntimeError,
    CommandInterface,
    RuntimeUseClient,
)

from helpers import OMITTED_RE, command_execution, execute, of_type, qopts, raw_connect, run, terminal_of

MIB = 1024 * 1024


class Collector:
    """on_command_output callback that keeps every chunk."""

    def __init__(self):
        self.chunks = []

    async def __call__(self, msg):
        self.chunks.append((msg.stream, msg.text, msg.command))

    def text(self, stream):
        return "".join(t for s, t, _ in self.chunks if s == stream)

    def nbytes(self, stream):
        return sum(len(t.encode()) for s, t, _ in self.chunks if s == stream)


def assert_bounded(stdout: str, total: int, char: str):
    """`stdout` is head + marker + tail of `total` bytes of `char`."""
    match = OMITTED_RE.search(stdout)
    assert match, f"no omission marker in {len(stdout)} chars of stdout"
    omitted = int(match.group(1))
    kept = stdout[: match.start()] + stdout[match.end():]
    assert kept.count(char) + omitted == total
    assert set(kept.strip("\n")) <= {char, "\n"}
    assert stdout.startswith(char) and stdout.rstrip("\n").endswith(char)


# ---------------------------------------------------------------- basics


def test_single_command_result(echo_runtime):
    result = execute(echo_runtime.url, ["echo hello"])
    assert len(result.results) == 1
    item = result.results[0]
    assert (item.command, item.exit_code, item.stdout) == ("echo hello", 0, "hello\n")


def test_commands_run_in_order_one_result_each(echo_runtime, tmp_path):
    log = tmp_path / "log"
    cmds = [f"echo {i} >> {log}; echo out{i}" for i in range(5)]
    result = execute(echo_runtime.url, cmds)
    assert [r.command for r in result.results] == cmds
    assert [r.exit_code for r in result.results] == [0] * 5
    assert [r.stdout for r in result.results] == [f"out{i}\n" for i in range(5)]
    assert log.read_text() == "".join(f"{i}\n" for i in range(5))


def test_runs_under_bin_sh_c(echo_runtime):
    # Pipes, redirections, && and $(...) are the shell's.
    result = execute(echo_runtime.url, ["printf 'b\\na\\n' | sort | tr a-z A-Z && echo $((6*7))"])
    assert result.results[0].stdout == "A\nB\n42\n"


def test_nonzero_exit_stops_the_list(echo_runtime, tmp_path):
    never = tmp_path / "never"
    result = execute(echo_runtime.url, ["echo first", "echo second; exit 3", f"touch {never}"])
    assert [(r.exit_code, r.stdout) for r in result.results] == [(0, "first\n"), (3, "second\n")]
    assert not never.exists()


def test_unknown_program_exits_127(echo_runtime):
    result = execute(echo_runtime.url, ["no-such-program-xyz"])
    assert result.results[0].exit_code == 127


def test_cwd_is_created_if_missing(echo_runtime, tmp_path):
    cwd = tmp_path / "a" / "b" / "c"
    result = execute(echo_runtime.url, [CommandInterface(command="pwd", cwd=str(cwd))])
    assert result.results[0].stdout == f"{cwd}\n"
    assert cwd.is_dir()


def test_env_is_laid_over_the_runtime_environment(start_runtime):
    rt = start_runtime("--agent", "echo", env={"RT_MARK": "from-runtime", "RT_OVERRIDE": "old"})
    cmd = CommandInterface(
        command='echo "$RT_MARK|$RT_OVERRIDE|$CMD_ONLY"',
        env={"RT_OVERRIDE": "new", "CMD_ONLY": "x"},
    )
    result = execute(rt.url, [cmd])
    assert result.results[0].stdout == "from-runtime|new|x\n"


def test_env_does_not_leak_into_the_next_command(echo_runtime):
    result = execute(
        echo_runtime.url,
        [CommandInterface(command='echo "[$ONLY_FIRST]"', env={"ONLY_FIRST": "y"}), 'echo "[$ONLY_FIRST]"'],
    )
    assert [r.stdout for r in result.results] == ["[y]\n", "[]\n"]


def test_stdout_and_stderr_are_streamed(echo_runtime):
    out = Collector()
    cmd = "echo to-out; echo to-err >&2; echo more-out"
    result = execute(echo_runtime.url, [cmd], on_command_output=out)
    assert out.text("stdout") == "to-out\nmore-out\n"
    assert out.text("stderr") == "to-err\n"
    assert {c for _, _, c in out.chunks} == {cmd}
    assert result.results[0].stdout == "to-out\nmore-out\n"


def test_output_streams_while_the_command_runs(echo_runtime):
    """The first line arrives long before the command ends."""
    arrivals = []

    async def on_output(msg):
        arrivals.append((time.monotonic(), msg.text))

    started = time.monotonic()
    execute(echo_runtime.url, ["echo early; sleep 1; echo late"], on_command_output=on_output)
    early = next(t for t, text in arrivals if "early" in text)
    assert early - started < 0.8


# ---------------------------------------------------------------- big and odd output


def test_medium_output_is_returned_whole(echo_runtime):
    out = Collector()
    result = execute(echo_runtime.url, ["head -c 200000 /dev/zero | tr '\\0' m"], on_command_output=out)
    assert result.results[0].stdout == "m" * 200_000
    assert out.text("stdout") == "m" * 200_000


def test_exactly_one_mib_of_output(echo_runtime):
    """The Node original fails here with "No result message received"."""
    out = Collector()
    result = execute(echo_runtime.url, [f"head -c {MIB} /dev/zero | tr '\\0' a"], on_command_output=out)
    assert result.results[0].exit_code == 0
    assert out.nbytes("stdout") == MIB
    assert set(out.text("stdout")) == {"a"}
    assert_bounded(result.results[0].stdout, MIB, "a")


def test_one_mib_output_frames_fit_the_client_limit(echo_runtime):
    async def main():
        async with raw_connect(echo_runtime.url) as c:
            msgs = await c.request(command_execution([f"head -c {MIB} /dev/zero | tr '\\0' a; echo tail-end"]))
            return c, msgs

    c, msgs = run(main())
    assert max(len(f.encode()) for f in c.frames) < MIB
    term = terminal_of(msgs)
    assert term["message_type"] == "command_execution_result_message"
    assert term["results"][0]["stdout"].endswith("tail-end\n")
    assert sum(len(m["text"]) for m in of_type(msgs, "command_output_message")) == MIB + len("tail-end\n")


def test_64_mib_of_output(echo_runtime):
    total = 64 * MIB
    out = Collector()
    result = execute(
        echo_runtime.url,
        [f"head -c {total} /dev/zero | tr '\\0' b", "echo after"],
        on_command_output=out,
    )
    assert [r.exit_code for r in result.results] == [0, 0]
    assert result.results[1].stdout == "after\n"
    assert out.nbytes("stdout") == total + len("after\n")
    assert_bounded(result.results[0].stdout, total, "b")


def test_several_large_outputs_in_one_request(echo_runtime):
    """Each result alone fits; all of them together must still fit one frame."""
    cmds = [f"head -c {MIB} /dev/zero | tr '\\0' {ch}" for ch in "cdefg"]
    result = execute(echo_runtime.url, cmds)
    assert [r.exit_code for r in result.results] == [0] * 5
    for r, ch in zip(result.results, "cdefg", strict=True):
        assert r.stdout.startswith(ch) and OMITTED_RE.search(r.stdout)


def test_large_stderr_is_streamed_whole(echo_runtime):
    out = Collector()
    result = execute(echo_runtime.url, [f"head -c {2 * MIB} /dev/zero | tr '\\0' e >&2; echo ok"], on_command_output=out)
    assert out.nbytes("stderr") == 2 * MIB
    assert result.results[0].stdout == "ok\n"


def test_non_utf8_output_does_not_break_anything(echo_runtime):
    out = Collector()
    cmd = "printf 'abc\\377\\376def\\n'; printf '\\200\\201err\\n' >&2"
    result = execute(echo_runtime.url, [cmd, "echo still-fine"], on_command_output=out)
    assert [r.exit_code for r in result.results] == [0, 0]
    first = result.results[0].stdout
    assert first.startswith("abc") and first.endswith("def\n")
    assert "abc" in out.text("stdout") and "def" in out.text("stdout")
    assert "err" in out.text("stderr")
    assert result.results[1].stdout == "still-fine\n"


def test_utf8_character_split_across_reads(echo_runtime):
    out = Collector()
    # "é" is \303\251: its two bytes arrive in different reads.
    result = execute(echo_runtime.url, ["printf '\\303'; sleep 0.3; printf '\\251\\n'"], on_command_output=out)
    assert result.results[0].stdout == "é\n"
    assert out.text("stdout") == "é\n"


# ---------------------------------------------------------------- pre/post agent commands


def query(url, prompt, **kw):
    return run(RuntimeUseClient(ws_url=url).query(prompt, qopts(**kw)))


def test_pre_and_post_commands_run_around_the_agent(echo_runtime, tmp_path):
    work = tmp_path / "work" / "nested"  # does not exist yet
    log = tmp_path / "order.log"
    out = Collector()
    pre = [
        CommandInterface(command=f"test ! -e agent.txt && echo pre >> {log} && echo pre-out", cwd=str(work)),
        CommandInterface(command='echo "$PRE_VAR" > pre-env.txt', cwd=str(work), env={"PRE_VAR": "pre-env"}),
    ]
    post = [CommandInterface(command=f"test -e agent.txt && echo post >> {log} && echo post-out", cwd=str(work))]
    result = query(
        echo_runtime.url,
        f"WRITE_FILE:{work / 'agent.txt'} from-agent",
        pre_agent_invocation_commands=pre,
        post_agent_invocation_commands=post,
        on_command_output=out,
    )
    assert result.data.text == f"wrote {work / 'agent.txt'}"
    assert log.read_text() == "pre\npost\n"
    assert (work / "pre-env.txt").read_text() == "pre-env\n"
    assert out.text("stdout") == "pre-out\npost-out\n"


def test_failing_pre_command_stops_the_invocation(echo_runtime, tmp_path):
    agent_file = tmp_path / "agent.txt"
    never = tmp_path / "never"
    with pytest.raises(AgentRuntimeError) as info:
        query(
            echo_runtime.url,
            f"WRITE_FILE:{agent_file} x",
            pre_agent_invocation_commands=[
                CommandInterface(command="echo ok"),
                CommandInterface(command="exit 7"),
                CommandInterface(command=f"touch {never}"),
            ],
            post_agent_invocation_commands=[CommandInterface(command=f"touch {never}")],
        )
    assert "failed with exit code: 7" in info.value.error
    assert not agent_file.exists()
    assert not never.exists()


def test_failing_post_command_is_an_error_after_the_agent_ran(echo_runtime, tmp_path):
    agent_file = tmp_path / "agent.txt"
    with pytest.raises(AgentRuntimeError) as info:
        query(
            echo_runtime.url,
            f"WRITE_FILE:{agent_file} x",
            post_agent_invocation_commands=[CommandInterface(command="echo post; exit 4")],
        )
    assert "failed with exit code: 4" in info.value.error
    assert agent_file.read_text() == "x"


def test_pre_command_stderr_is_streamed(echo_runtime):
    out = Collector()
    query(
        echo_runtime.url,
        "ECHO:x",
        pre_agent_invocation_commands=[CommandInterface(command="echo warn >&2")],
        on_command_output=out,
    )
    assert out.text("stderr") == "warn\n"
