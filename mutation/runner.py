"""Apply each mutation to a throwaway copy of the repository and see whether the tests notice.

The copy holds the files git knows about (tracked, or new and not ignored), so work in progress is
tested as it stands. Tests run in the copy with ``PYTHONPATH`` pointing at it, which also reaches
the child processes the tests start (the crash tests' programs, the README's snippets), so every
process imports the mutated library and none imports the checkout. Bytecode is not written,
because a mutated and a restored module can share a size and a modification second, and a stale
``.pyc`` would then run the wrong code.

Mutations run one after another by default (the suite is partly I/O-bound, but the machine is
shared); ``--jobs N`` runs N at once, each in a copy of its own.
"""

from __future__ import annotations

import argparse
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from .mutations import MUTATIONS, Mutation

ROOT = Path(__file__).resolve().parent.parent
ALL_TESTS = ("tests",)


@dataclass(frozen=True)
class Outcome:
    mutation: Mutation
    status: str  # "killed" | "survived" | "timeout"
    seconds: float
    detail: str = ""

    @property
    def killed(self) -> bool:
        return self.status != "survived"


def stale(mutations: Sequence[Mutation], root: Path = ROOT) -> list[str]:
    """What no longer fits the code: a snippet found zero or several times, a missing file, a twin name."""
    problems: list[str] = []
    seen: set[str] = set()
    for m in mutations:
        if m.name in seen:
            problems.append(f"{m.name}: the name is used twice")
        seen.add(m.name)
        path = root / m.module
        if not path.is_file():
            problems.append(f"{m.name}: {m.module} does not exist")
            continue
        count = path.read_text().count(m.find)
        if count != 1:
            where = "is not in" if count == 0 else f"occurs {count} times in"
            problems.append(f"{m.name}: the snippet {where} {m.module}: {m.find!r}")
        if m.find == m.replace:
            problems.append(f"{m.name}: the replacement changes nothing")
        for target in m.tests:
            if not (root / target.split("::")[0]).exists():
                problems.append(f"{m.name}: no test file {target.split('::')[0]}")
    return problems


def _files(root: Path) -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [f for f in listed.split("\0") if f and (root / f).is_file()]


@contextmanager
def repo_copy(root: Path = ROOT) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="timestep-mutation-") as tmp:
        copy = Path(tmp) / "repo"
        for name in _files(root):
            target = copy / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / name, target)
        yield copy


@contextmanager
def repo_copies(n: int) -> Iterator[list[Path]]:
    """``n`` copies of the repository, removed afterwards."""
    with ExitStack() as stack:
        yield [stack.enter_context(repo_copy()) for _ in range(n)]


def _env(copy: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(copy), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def check_imports_copy(copy: Path) -> None:
    """Fail loudly if the copy's tests would import the checkout's library instead of the copy's."""
    where = subprocess.run(
        [sys.executable, "-c", "import timestep; print(timestep.__file__)"],
        cwd=copy,
        env=_env(copy),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(where).resolve().is_relative_to(copy.resolve()):
        raise SystemExit(f"the copy imports timestep from {where}, not from {copy}: mutations would not be tested")


def pytest(copy: Path, targets: Iterable[str], timeout: float) -> tuple[str, str]:
    """Run the targets in the copy: ("passed" | "failed" | "timeout", the last lines of output)."""
    argv = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *targets]
    try:
        proc = subprocess.run(argv, cwd=copy, env=_env(copy), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", ""
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
    if proc.returncode == 5:
        raise SystemExit(f"pytest collected no tests from {list(targets)}:\n{tail}")
    return ("passed" if proc.returncode == 0 else "failed"), tail


def run_one(copy: Path, m: Mutation, full: bool, timeout: float) -> Outcome:
    path = copy / m.module
    original = path.read_text()
    path.write_text(original.replace(m.find, m.replace, 1))
    started = time.monotonic()
    try:
        result, tail = pytest(copy, ALL_TESTS if full or not m.tests else m.tests, timeout)
    finally:
        path.write_text(original)
    status = {"passed": "survived", "failed": "killed", "timeout": "timeout"}[result]
    return Outcome(m, status, time.monotonic() - started, tail)


def select(names: Sequence[str], module: str | None) -> list[Mutation]:
    chosen = [m for m in MUTATIONS if (not names or m.name in names) and (module is None or module in m.module)]
    unknown = set(names) - {m.name for m in MUTATIONS}
    if unknown:
        raise SystemExit(f"no mutation named {', '.join(sorted(unknown))} (see --list)")
    return chosen


def report(outcomes: Sequence[Outcome], target: float) -> int:
    """Print the per-module kill rates; non-zero if a survivor is unexplained or a module is below target."""
    by_module: dict[str, list[Outcome]] = {}
    for o in outcomes:
        by_module.setdefault(o.mutation.module, []).append(o)
    print("\nmodule                          killed  total  rate")
    failing = False
    for module, group in sorted(by_module.items()):
        killed = sum(o.killed for o in group)
        rate = killed / len(group)
        failing |= rate < target
        print(f"{module:<32}{killed:>6}{len(group):>7}  {rate:6.1%}")
    killed = sum(o.killed for o in outcomes)
    print(f"{'all':<32}{killed:>6}{len(outcomes):>7}  {killed / max(len(outcomes), 1):6.1%}")
    unexplained = [o for o in outcomes if not o.killed and o.mutation.harmless is None]
    for o in outcomes:
        if not o.killed and o.mutation.harmless is not None:
            print(f"survived, harmless: {o.mutation.name}: {o.mutation.harmless}")
        if o.killed and o.mutation.harmless is not None:
            print(f"now killed, drop its harmless note: {o.mutation.name}")
    for o in unexplained:
        print(f"SURVIVED with no test to notice: {o.mutation.name} ({o.mutation.module}): {o.mutation.description}")
    return 1 if unexplained or failing else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mutation", description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="run only these mutations (default: all)")
    parser.add_argument("--module", help="run only the mutations of modules whose path contains this")
    parser.add_argument("--full", action="store_true", help="run the whole suite for every mutation")
    parser.add_argument("--list", action="store_true", help="list the mutations and check them, run nothing")
    parser.add_argument("--jobs", type=int, default=1, help="mutations tested at once (default 1)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per mutation before it counts as killed")
    parser.add_argument("--target", type=float, default=0.9, help="the kill rate each module must reach")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run of the selected tests")
    args = parser.parse_args(argv)

    problems = stale(MUTATIONS)
    if problems:
        print("mutations that no longer fit the code (update mutation/mutations.py):", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 2
    chosen = select(args.names, args.module)
    if args.list:
        for m in chosen:
            print(f"{m.name:<36} {m.module:<30} {m.description}")
        print(f"{len(chosen)} mutations, all matching their modules")
        return 0

    with repo_copies(max(1, args.jobs)) as copies:
        check_imports_copy(copies[0])
        if not args.no_baseline:
            targets = (
                ALL_TESTS
                if args.full or any(not m.tests for m in chosen)
                else tuple(dict.fromkeys(t for m in chosen for t in m.tests))
            )
            result, tail = pytest(copies[0], targets, args.timeout * 2)
            if result != "passed":
                print(f"the unmutated tests do not pass ({result}); fix that first:\n{tail}", file=sys.stderr)
                return 2
        free: queue.Queue[Path] = queue.Queue()
        for c in copies:
            free.put(c)

        def test(m: Mutation) -> Outcome:
            copy = free.get()
            try:
                outcome = run_one(copy, m, args.full, args.timeout)
            finally:
                free.put(copy)
            print(f"{outcome.status.upper():<9}{outcome.seconds:6.1f}s  {m.name:<36} {m.description}", flush=True)
            return outcome

        with ThreadPoolExecutor(max_workers=len(copies)) as pool:
            outcomes = list(pool.map(test, chosen))
    return report(outcomes, args.target)
