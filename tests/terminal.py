"""The CLI on a pty of a given size, as a terminal emulator runs it: keys typed, the screen read back.
Used by the interactive commands' tests (tests/agent/test_debugger.py, tests/dataengine/test_review.py)."""
from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import termios
import time

# Terminal control sequences (colours, bracketed paste, cursor moves) are not text on the screen.
CONTROL = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[=>]|\r")


class Terminal:
    """The CLI on a pty of a given size, as a terminal emulator runs it."""

    def __init__(self, args: list[str], columns: int = 160, rows: int = 50):
        self.master, child = pty.openpty()
        fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        env = {**os.environ, "TERM": "xterm-256color", "LC_ALL": "C.UTF-8", "COLUMNS": str(columns)}
        env.pop("SUPERTINY_DB", None)
        self.process = subprocess.Popen(args, stdin=child, stdout=child, stderr=child, env=env,
                                        start_new_session=True, close_fds=True)
        os.close(child)
        self.raw = b""
        self.mark: int | None = None  # where the screen stood when the last line was typed (None: none yet)

    @property
    def screen(self) -> str:
        return CONTROL.sub("", self.raw.decode("utf-8", "replace"))

    def _read(self, timeout: float) -> None:
        ready, _, _ = select.select([self.master], [], [], max(timeout, 0))
        if ready:
            try:
                self.raw += os.read(self.master, 65536)
            except OSError:  # EIO: the program closed the terminal
                time.sleep(0.05)

    def _printed(self) -> str:
        """The screen since the last typed line, without the echo of that line (the whole screen
        before any line was typed)."""
        shown = self.screen[self.mark:]
        return shown if self.mark is None else shown.partition("\n")[2]

    def expect(self, *texts: str, timeout: float = 20.0) -> str:
        """Wait until the program printed every text and waits for input again (a prompt ending
        in "> "); return what it printed since the last typed line, without the echo of that line."""
        deadline = time.monotonic() + timeout
        while True:
            output = self._printed()
            if all(text in output for text in texts) and output.endswith("> "):
                return output
            shown = self.screen[self.mark:]
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {texts!r}; the screen shows:\n{shown}")
            if self.process.poll() is not None and not select.select([self.master], [], [], 0)[0]:
                raise AssertionError(f"the program exited ({self.process.returncode}); the screen shows:\n{shown}")
            self._read(deadline - time.monotonic())

    def type(self, line: str) -> None:
        """Type a line and press Enter, without waiting for the answer."""
        self.mark = len(self.screen)
        os.write(self.master, line.encode() + b"\r")

    def command(self, line: str, *texts: str) -> str:
        """Type a line; wait for ``texts`` and the next prompt (see ``expect``)."""
        self.type(line)
        return self.expect(*texts)

    def finish(self, line: str, timeout: float = 20.0) -> tuple[int, str]:
        """Type the last line; wait for the program to exit. Returns (exit code, what it printed)."""
        self.type(line)
        deadline = time.monotonic() + timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            self._read(0.1)
        self._read(0.2)
        return self.process.wait(timeout=1), self._printed()

    def close(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        os.close(self.master)
