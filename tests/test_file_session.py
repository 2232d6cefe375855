"""FileSession's own promises: safe names, append-only writes, torn-line repair, corrupt-line errors."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest

from timestep import FileSession, SessionCorruptError, SessionNameError

HOSTILE = ["..", "../../etc/passwd", "/abs/path", "a\\b", ".hidden", "con", "a/../../b", "~root"]


@pytest.mark.parametrize("name", HOSTILE)
async def test_hostile_names_never_leave_the_storage_folder(tmp_path: Path, name: str) -> None:
    root = tmp_path / "store"
    for session in (FileSession(name, "c", None, root), FileSession("agent", name, None, root)):
        await session.add_items([{"role": "user", "content": "hi"}])
        assert session.path.resolve().is_relative_to(root.resolve())
        assert session.path.exists()
    found = {(c.agent_name, c.conversation_id) for c in FileSession.list_conversations(root)}
    assert found == {(name, "c"), ("agent", name)}
    assert {p.name for p in tmp_path.iterdir()} == {"store"}


def test_names_that_cannot_name_a_file_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SessionNameError, match="non-empty"):
        FileSession("", "c", None, tmp_path)
    with pytest.raises(SessionNameError, match="too long"):
        FileSession("agent", "x" * 500, None, tmp_path)


async def test_agent_names_with_spaces_and_unicode(tmp_path: Path) -> None:
    session = FileSession("Personal Assistant", "Gespräch 1 🌦", "Be kind.", tmp_path)
    await session.add_items([{"role": "user", "content": "héllo 🌦"}])
    again = FileSession("Personal Assistant", "Gespräch 1 🌦", "Be kind.", tmp_path)
    assert await again.get_items() == [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "héllo 🌦"},
    ]


async def test_a_torn_last_line_is_repaired_and_kept_aside(tmp_path: Path) -> None:
    session = FileSession("a", "c", "sys", tmp_path)
    await session.add_items([{"role": "user", "content": "one"}, {"role": "assistant", "content": "two"}])
    with open(session.path, "ab") as f:
        f.write(b'{"role": "user", "content": "thr')  # a writer killed mid-line
    fresh = FileSession("a", "c", "sys", tmp_path)
    assert [i.get("content") for i in await fresh.get_items()] == ["sys", "one", "two"]
    assert Path(str(session.path) + ".torn").read_bytes().startswith(b'{"role": "user", "content": "thr')
    await fresh.add_items([{"role": "user", "content": "three"}])
    lines = session.path.read_text().splitlines()
    assert [json.loads(x)["content"] for x in lines] == ["sys", "one", "two", "three"]


async def test_appending_after_a_torn_line_never_merges_lines(tmp_path: Path) -> None:
    session = FileSession("a", "c", None, tmp_path)
    await session.add_items([{"role": "user", "content": "one"}])
    with open(session.path, "ab") as f:
        f.write(b'{"role": "assis')
    await FileSession("a", "c", None, tmp_path).add_items([{"role": "user", "content": "two"}])
    assert [json.loads(x)["content"] for x in session.path.read_text().splitlines()] == ["one", "two"]


async def test_a_corrupt_line_in_the_middle_is_a_clear_error_naming_file_and_line(tmp_path: Path) -> None:
    session = FileSession("a", "c", None, tmp_path)
    await session.add_items([{"role": "user", "content": str(n)} for n in range(5)])
    lines = session.path.read_text().splitlines()
    lines[2] = "{garbage"
    session.path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SessionCorruptError, match=r"line 3: not valid JSON") as err:
        await FileSession("a", "c", None, tmp_path).get_items()
    assert err.value.line == 3 and str(session.path) in str(err.value)
    assert session.path.read_text().count("\n") == 5  # nothing was dropped or rewritten


async def test_append_never_reads_or_rewrites_what_is_stored(tmp_path: Path) -> None:
    """An append to a file whose middle is unreadable still works: it only writes at the end."""
    session = FileSession("a", "c", None, tmp_path)
    await session.add_items([{"role": "user", "content": "x" * 100} for _ in range(10_000)])
    with open(session.path, "r+b") as f:
        f.seek(500_000)
        f.write(b"\xff\xff")
    before = session.path.read_bytes()
    inode = session.path.stat().st_ino
    await FileSession("a", "c", None, tmp_path).add_items([{"role": "assistant", "content": "appended"}])
    after = session.path.read_bytes()
    assert after.startswith(before) and after[len(before) :] == b'{"role":"assistant","content":"appended"}\n'
    assert session.path.stat().st_ino == inode


async def test_pop_and_clear_keep_the_system_message(tmp_path: Path) -> None:
    session = FileSession("a", "c", "sys", tmp_path)
    assert await session.pop_item() is None
    await session.add_items([{"role": "user", "content": "1"}, {"role": "assistant", "content": "2"}])
    assert await session.pop_item() == {"role": "assistant", "content": "2"}
    assert await session.get_items(limit=1) == [{"role": "user", "content": "1"}]
    await session.clear_session()
    assert await FileSession("a", "c", "sys", tmp_path).get_items() == [{"role": "system", "content": "sys"}]
    assert await session.pop_item() is None


async def test_the_cache_sees_appends_from_other_writers(tmp_path: Path) -> None:
    mine, theirs = FileSession("a", "c", None, tmp_path), FileSession("a", "c", None, tmp_path)
    await mine.add_items([{"role": "user", "content": "1"}])
    assert len(await mine.get_items()) == 1
    await theirs.add_items([{"role": "assistant", "content": "2"}])
    assert [i["content"] for i in await mine.get_items()] == ["1", "2"]
    await theirs.pop_item()
    os.utime(mine.path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert [i["content"] for i in await mine.get_items()] == ["1"]


async def test_a_large_read_does_not_block_the_event_loop(tmp_path: Path) -> None:
    session = FileSession("a", "c", None, tmp_path)
    await session.add_items([{"role": "user", "content": "y" * 1000} for _ in range(20_000)])
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.ensure_future(ticker())
    await asyncio.sleep(0)
    start = ticks
    items = await FileSession("a", "c", None, tmp_path).get_items()
    task.cancel()
    assert len(items) == 20_000
    assert ticks - start > 1  # the loop kept running while 20 MB were parsed in a worker thread


FSYNC_CHILD = """
import asyncio, sys
from timestep import FileSession

async def main():
    await FileSession("a", "durable", None, sys.argv[1], fsync=True).add_items([{"role": "user", "content": "1"}])
    await FileSession("a", "durable", None, sys.argv[1], fsync=True).add_items([{"role": "user", "content": "2"}])
    await FileSession("a", "plain", None, sys.argv[1]).add_items([{"role": "user", "content": "3"}])

asyncio.run(main())
"""


def _fsyncs_per_file(tmp_path: Path) -> dict[str, int]:
    """Run the child and count the fsync system calls made on each conversation file, as the kernel saw them."""
    import shutil
    import subprocess
    import sys

    trace = tmp_path / "trace.txt"
    store = tmp_path / "store"
    if shutil.which("strace"):
        argv = [
            "strace",
            "-f",
            "-y",
            "-e",
            "trace=fsync,fdatasync",
            "-o",
            str(trace),
            sys.executable,
            "-c",
            FSYNC_CHILD,
        ]
        env = dict(os.environ)
    else:  # no strace: count calls to os.fsync, wrapped before anything is imported
        hook = tmp_path / "hook"
        hook.mkdir()
        (hook / "sitecustomize.py").write_text(
            "import os\n_real = os.fsync\n"
            "def _counting(fd):\n"
            f"    open({str(trace)!r}, 'a').write('fsync(' + os.readlink(f'/proc/self/fd/{{fd}}') + ')\\n')\n"
            "    return _real(fd)\nos.fsync = _counting\n"
        )
        argv = [sys.executable, "-c", FSYNC_CHILD]
        env = {**os.environ, "PYTHONPATH": f"{hook}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([*argv, str(store)], capture_output=True, text=True, timeout=120, check=False, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = trace.read_text().splitlines() if trace.exists() else []
    return {name: sum(1 for x in lines if "sync(" in x and f"{name}.jsonl" in x) for name in ("durable", "plain")}


def test_fsync_mode_fsyncs_every_append_and_only_then(tmp_path: Path) -> None:
    assert _fsyncs_per_file(tmp_path) == {"durable": 2, "plain": 0}


class WritersLockHolder:
    """Another process holding a conversation's writers' lock (``flock``) until told to let go, and
    appending ``line`` just before it does, as another writer would."""

    def __init__(self, path: Path, line: bytes = b"") -> None:
        import subprocess
        import sys

        script = (
            "import fcntl, sys\nf = open(sys.argv[1], 'ab')\nfcntl.flock(f, fcntl.LOCK_EX)\n"
            "print('held', flush=True)\nsys.stdin.readline()\nf.write(sys.argv[2].encode()); f.flush()"
        )
        self.process = subprocess.Popen(
            [sys.executable, "-c", script, str(path), line.decode()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    async def __aenter__(self) -> WritersLockHolder:
        assert self.process.stdout is not None
        assert (await asyncio.to_thread(self.process.stdout.readline)).strip() == "held"
        return self

    def release(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("release\n")
        self.process.stdin.flush()

    async def __aexit__(self, *exc: object) -> None:
        self.process.kill()
        self.process.communicate(timeout=30)


async def test_a_read_waits_while_another_process_holds_the_writers_lock(tmp_path: Path) -> None:
    session = FileSession("a", "c", None, tmp_path)
    await session.add_items([{"role": "user", "content": "stored"}])
    async with WritersLockHolder(session.path) as holder:
        reader = asyncio.create_task(FileSession("a", "c", None, tmp_path).get_items())
        await asyncio.sleep(0.3)
        assert not reader.done(), "a read went ahead while a writer held the file"
        holder.release()
        assert await asyncio.wait_for(reader, 30) == [{"role": "user", "content": "stored"}]


async def test_a_run_holding_the_conversation_still_waits_for_another_writer(tmp_path: Path) -> None:
    """A run's appends reuse its lock's descriptor, yet still take the writers' lock every time."""
    from timestep import SessionBusyError

    session = FileSession("a", "c", None, tmp_path)
    async with session.lock(timeout=5):
        await session.add_items([{"role": "user", "content": "first"}])
        async with WritersLockHolder(session.path, b'{"role": "user", "content": "theirs"}\n') as holder:
            writer = asyncio.create_task(session.add_items([{"role": "assistant", "content": "ours"}]))
            await asyncio.sleep(0.3)
            assert not writer.done(), "an append went ahead while another process held the writers' lock"
            holder.release()
            await asyncio.wait_for(writer, 30)
        contents = [m["content"] for m in await session.get_items()]
        assert sorted(contents) == ["first", "ours", "theirs"] and contents[0] == "first"
        with pytest.raises(SessionBusyError):  # appends never release the run lock itself
            async with FileSession("a", "c", None, tmp_path).lock(timeout=0.2):
                pass
    async with FileSession("a", "c", None, tmp_path).lock(timeout=5):
        pass


def test_one_file_per_conversation_even_when_locked(tmp_path: Path) -> None:
    async def main() -> None:
        session = FileSession("a", "c", None, tmp_path)
        async with session.lock(timeout=5):
            await session.add_items([{"role": "user", "content": "hi"}])

    asyncio.run(main())
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["c.jsonl"]


async def test_listing_counts_messages_not_journal_records(tmp_path: Path) -> None:
    session = FileSession("a", "c", None, tmp_path)
    await session.add_items(
        [
            {"role": "user", "content": "hi"},
            {"journal": "started", "call": "1", "args": {"role": "admin"}},
            {"content": "key order differs", "role": "assistant"},
        ]
    )
    [info] = FileSession.list_conversations(tmp_path)
    assert (info.agent_name, info.conversation_id, info.message_count) == ("a", "c", 2)


def test_a_write_that_fails_half_way_takes_back_what_it_wrote(tmp_path: Path) -> None:
    """A full disk (here: a file-size limit) must not leave half a batch behind."""
    script = f"""
import asyncio, resource, signal
from timestep import FileSession, SessionUnavailableError

async def main():
    session = FileSession("a", "c", None, {str(tmp_path)!r})
    await session.add_items([{{"role": "user", "content": "kept"}}])
    size = session.path.stat().st_size
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 100, size + 100))
    try:
        await session.add_items([{{"role": "user", "content": "x" * 60}}, {{"role": "user", "content": "y" * 60}}])
    except SessionUnavailableError as exc:
        print("refused:", exc)
    print(session.path.stat().st_size == size)

asyncio.run(main())
"""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "refused: cannot append to" in proc.stdout and proc.stdout.strip().endswith("True")
