"""Answer a paused durable run from a process that is not a worker: ``python durable_decide.py URL CONV CALL``.

It prints the id of the run that continues the conversation, and exits; it never runs agent code.
"""

from __future__ import annotations

import asyncio
import sys

from timestep.durable import DurableClient


async def main(url: str, conversation_id: str, call_id: str) -> None:
    async with await DurableClient.connect(url) as client:
        run = await client.resume("Recorder", conversation_id, {call_id: True})
        print(run.run_id)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
