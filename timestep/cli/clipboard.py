"""``/copy``: the last reply onto the system clipboard.

The first clipboard program found that accepts the text wins (``pbcopy``, ``wl-copy``, ``xclip``,
``xsel``, ``clip.exe``); without one, a terminal is asked to do it with the OSC 52 escape
sequence, which most terminals and tmux (``set-clipboard on``) honour, over SSH too.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import sys

from .render import Output

PROGRAMS = (
    ("pbcopy",),
    ("wl-copy",),
    ("xclip", "-selection", "clipboard"),
    ("xsel", "--clipboard", "--input"),
    ("clip.exe",),
)


def copy(text: str, output: Output) -> str | None:
    """Put ``text`` on the clipboard; returns how it was done, or None when there was no way."""
    for program, *args in PROGRAMS:
        path = shutil.which(program)
        if path is None:
            continue
        try:
            # No pipes for its output: xclip stays behind to own the selection, and would hold them open.
            done = subprocess.run(
                [path, *args],
                input=text.encode(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=5,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0:
            return program
    if output.fancy:
        sys.stdout.write(f"\033]52;c;{base64.b64encode(text.encode()).decode()}\a")
        sys.stdout.flush()
        return "the terminal (OSC 52)"
    return None
