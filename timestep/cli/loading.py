"""Finding the Agent a command line names: ``path/to/file.py:name`` or ``package.module:name``.

Whatever goes wrong here is the user's to fix (a typo in a path, a name that is not an Agent, an
error inside their own module), so each failure becomes a :class:`click.ClickException` that says
what was looked for and where; the original exception stays chained for ``--debug``.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import click

from ..agent import Agent
from ..model import DEFAULT_BASE_URL, ModelClient

SPEC_HELP = "give FILE.py:NAME or package.module:NAME"


def load_agent(spec: str) -> Agent:
    """Import the module or file ``spec`` points at and return its Agent."""
    target, sep, name = spec.rpartition(":")
    if not sep:
        target, name = spec, ""
    if not target:
        raise click.ClickException(f"{spec!r} names no file or module: {SPEC_HELP}")
    module = _load_file(target) if _looks_like_file(target) else _load_module(target)
    where = target
    if not name:
        return _only_agent(module, where)
    obj: Any = module
    for part in name.split("."):
        if not hasattr(obj, part):
            found = _agents_in(module)
            hint = f" (Agents there: {', '.join(found)})" if found else " (it defines no Agent)"
            raise click.ClickException(f"{where} has no {name!r}{hint}")
        obj = getattr(obj, part)
    if not isinstance(obj, Agent):
        raise click.ClickException(f"{name!r} in {where} is a {type(obj).__name__}, not a timestep Agent")
    return obj


def _looks_like_file(target: str) -> bool:
    return target.endswith(".py") or os.sep in target or "/" in target or Path(target).is_file()


def _load_file(target: str) -> ModuleType:
    path = Path(target).expanduser()
    if not path.is_file():
        raise click.ClickException(f"no such file: {target}")
    path = path.resolve()
    module_name = f"_timestep_agent_{path.stem}_{abs(hash(str(path))):x}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise click.ClickException(f"cannot import {target}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    # Like `python file.py`: the file's folder is importable, so its sibling modules are too.
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    sys.modules[module_name] = module  # typing and pydantic look the module up while the tools are built
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise click.ClickException(f"cannot import {target}: {type(exc).__name__}: {exc}") from exc
    return module


def _load_module(target: str) -> ModuleType:
    # Like `python -m`: modules in the current folder are importable.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (target == exc.name or target.startswith(exc.name + ".")):
            raise click.ClickException(
                f"no module named {target!r} (run from the folder that contains it, or give a path to a .py file)"
            ) from exc
        raise click.ClickException(f"cannot import {target}: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:
        raise click.ClickException(f"cannot import {target}: {type(exc).__name__}: {exc}") from exc


def _agents_in(module: ModuleType) -> list[str]:
    return [n for n, v in vars(module).items() if isinstance(v, Agent) and not n.startswith("_")]


def _only_agent(module: ModuleType, where: str) -> Agent:
    found = _agents_in(module)
    if len(found) == 1:
        agent: Agent = getattr(module, found[0])
        return agent
    if not found:
        raise click.ClickException(f"{where} defines no Agent: {SPEC_HELP}")
    raise click.ClickException(f"{where} defines several Agents ({', '.join(found)}): pick one with {where}:NAME")


def with_model(agent: Agent, model: str) -> Agent:
    """A copy of ``agent`` and of every agent it hands off to, all using ``model``.

    The Agents the user wrote are left as they are: other code in their process may share them.
    """
    copies: dict[int, Agent] = {}

    def copy(a: Agent) -> Agent:
        if id(a) not in copies:
            copies[id(a)] = a  # a cycle (only possible by mutation) keeps the original
            copies[id(a)] = dataclasses.replace(a, model=model, handoffs=[copy(h) for h in a.handoffs])
        return copies[id(a)]

    return copy(agent)


def make_client(base_url: str | None, api_key: str | None) -> ModelClient:
    """The endpoint from ``--base-url``/``--api-key`` (or their environment variables).

    A local server needs no key, OpenAI does; saying so now beats a 401 after the first message.
    """
    url = base_url or DEFAULT_BASE_URL
    if not api_key and url.rstrip("/") == DEFAULT_BASE_URL:
        raise click.ClickException(
            "no API key: set OPENAI_API_KEY or pass --api-key (or --base-url for a local OpenAI-compatible server)"
        )
    if not url.startswith(("http://", "https://")):
        raise click.ClickException(f"--base-url {url!r} is not an http:// or https:// URL")
    return ModelClient(base_url=url, api_key=api_key or None)
