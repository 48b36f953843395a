"""Every request is answered, whatever goes wrong in starting a process: a script without `#!` (ENOEXEC),
a missing interpreter, a file that is not executable. Each is a clear `ok: false` naming the cause, and the
connection goes on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.daemon_proc import Berthd
from tests.test_native_runner import state_of, wait_for
from tests.wire import RawConnection


def script(tmp_path: Path, name: str, text: str, mode: int = 0o755) -> Path:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.mark.parametrize(
    ("text", "cause"),
    [
        ("echo no interpreter line\n", "Exec format error"),
        ("#!/nonexistent/interpreter\necho hi\n", "No such file or directory"),
    ],
    ids=["no-shebang", "missing-interpreter"],
)
def test_a_run_that_cannot_start_is_answered_and_the_connection_goes_on(
    berthd: Berthd, tmp_path: Path, text: str, cause: str
) -> None:
    tool = script(tmp_path, "tool", text)
    assert berthd.call(["apps:from-local", "broken", str(tool)]).ok
    with RawConnection(berthd.socket, timeout=30) as conn:
        conn.send(b"run broken\nping\n")
        answers = []
        while len(answers) < 2:
            message = json.loads(conn.read_line())
            if "ok" in message:
                answers.append(message)
    failed, pong = answers
    assert failed["ok"] is False and failed["error"] != "internal", failed
    assert cause in failed["output"] and str(tool) in failed["output"], failed
    assert pong == {"ok": True, "output": "pong"}


def test_a_supervised_process_that_cannot_start_backs_off_with_its_cause(
    berthd: Berthd, tmp_path: Path
) -> None:
    tool = script(tmp_path, "tool", "echo no interpreter line\n")
    assert berthd.call(["apps:from-local", "noshebang", str(tool), "--restart-policy", "on-failure:2"]).ok
    answer = berthd.call("ps:start noshebang")
    assert answer.error != "internal", answer
    wait_for(lambda: state_of(berthd, "noshebang") == "FAILED", timeout=20)
    notes = [
        line["text"] for line in berthd.call("logs noshebang --num 50").data if line["stream"] == "berthd"
    ]
    assert any("Exec format error" in note for note in notes), notes
    assert berthd.call("ping").output == "pong"
