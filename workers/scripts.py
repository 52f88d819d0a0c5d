"""The Lua scripts, loaded in one way: every multi-key step of wanq is one of them.

Each script (``workers/lua/NAME.lua``) starts with a header naming its KEYS and ARGV and binds
them to named locals. Before it, the loader puts the vocabularies and key names as Lua locals
(spelled once, in Python: ``workers.names``, ``workers.keys``) and the shared functions of
``workers/lua/lib``, so scripts share code without Redis functions (which would need loading
into the server and versioning).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any

import redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError

from workers import errors, keys
from workers.names import lua_constants

LUA = resources.files("workers") / "lua"
# workers/lua/lib: functions every script may call
LUA_LIBRARY = ("slots", "images", "abandoned", "money", "acks")


@functools.cache
def lua_preamble() -> str:
    """What every script starts with: the vocabularies and keys as Lua locals (one spelling,
    in Python), then the shared functions of ``workers/lua/lib``."""
    libraries = "".join((LUA / "lib" / f"{name}.lua").read_text() for name in LUA_LIBRARY)
    codes = ", ".join(f"['{code}'] = true" for code in errors.STOPPED_FOLLOWING)
    return (
        lua_constants()
        + keys.lua_constants()
        + f"local STOPPED_FOLLOWING = {{{codes}}}\n"
        + libraries
    )


def load_script(client: redis.Redis, name: str) -> Script:
    """``workers/lua/NAME.lua`` registered on ``client`` with the preamble; a script's
    ``#!lua flags=...`` line (e.g. allow-oom, for scripts that only free memory) stays first."""
    text = (LUA / f"{name}.lua").read_text()
    shebang = ""
    if text.startswith("#!"):
        shebang, text = text.split("\n", 1)
        shebang += "\n"
    return client.register_script(shebang + lua_preamble() + text)


def one_trip(
    client: redis.Redis,
    calls: Sequence[tuple[Script, list[Any], list[Any]]],
    reads: Callable[[redis.client.Pipeline], None] | None = None,
    reload: bool = True,
) -> tuple[list[Any], list[Any]]:
    """Scripts (script, keys, args) and then ``reads`` on one pipeline, in one round trip:
    the scripts' answers (an exception in place of each that failed) and the reads' replies.

    Scripts go as EVALSHA: redis-py's own pipelined scripts first ask SCRIPT EXISTS, a round
    trip of its own. Scripts the server does not know (restarted, flushed) did not run: they
    are loaded and run again, in one more round trip."""
    pipe = client.pipeline(transaction=False)
    for script, script_keys, args in calls:
        pipe.evalsha(script.sha, len(script_keys), *script_keys, *args)
    if reads:
        reads(pipe)
    replies = pipe.execute(raise_on_error=False)
    answers = replies[: len(calls)]
    missed = [i for i, answer in enumerate(answers) if isinstance(answer, NoScriptError)]
    if missed and reload:
        for script in {calls[i][0].sha: calls[i][0] for i in missed}.values():
            client.script_load(script.script)
        again, _ = one_trip(client, [calls[i] for i in missed], reload=False)
        for i, answer in zip(missed, again, strict=True):
            answers[i] = answer
    return answers, replies[len(calls) :]
