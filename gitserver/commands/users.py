"""`keys`, `keys:add`, `keys:remove`; for admins `users`, `users:add`, `users:remove`.
A key comes on stdin: `ssh ... keys:add < ~/.ssh/id_ed25519.pub`."""

from __future__ import annotations

from gitserver.commands.base import Args, Context, table
from peoplescloud.errors import UsageError

MAX_KEY_BYTES = 16 * 1024  # an OpenSSH public key line: RSA 16384 is under 3 KB


async def read_key(ctx: Context) -> str:
    """The public key line the client sends on stdin (up to EOF)."""
    data = b""
    while chunk := await ctx.channel.read(4096):
        data += chunk
        if len(data) > MAX_KEY_BYTES:
            raise UsageError(f"stdin holds more than {MAX_KEY_BYTES} bytes: one public key line")
    text = data.decode(errors="replace").strip()
    if not text:
        raise UsageError("no key on stdin: `ssh ... keys:add < ~/.ssh/id_ed25519.pub`")
    return text


async def keys(ctx: Context, args: Args) -> int:
    args.done()
    rows = await ctx.call(ctx.service.keys)
    for line in table(["FINGERPRINT", "TYPE"], [(r.fingerprint, r.type) for r in rows]):
        ctx.out(line)
    return 0


async def keys_add(ctx: Context, args: Args) -> int:
    args.done()
    added = await ctx.call(ctx.service.key_add, await read_key(ctx))
    ctx.out(f"-----> Added key {added}")
    return 0


async def keys_remove(ctx: Context, args: Args) -> int:
    fingerprint = args.word("FINGERPRINT")
    args.done()
    await ctx.call(ctx.service.key_remove, fingerprint)
    ctx.out(f"-----> Removed key {fingerprint}")
    return 0


async def users(ctx: Context, args: Args) -> int:
    args.done()
    rows = await ctx.call(ctx.service.users)
    for line in table(
        ["NAME", "ADMIN", "KEYS", "APPS"],
        [(r.name, "yes" if r.admin else "-", str(r.keys), str(r.apps)) for r in rows],
    ):
        ctx.out(line)
    return 0


async def users_add(ctx: Context, args: Args) -> int:
    admin = args.flag("--admin")
    name = args.word("NAME")
    args.done()
    await ctx.call(ctx.service.user_add, name, await read_key(ctx), admin)
    ctx.out(f"-----> {name}{' (admin)' if admin else ''} can now log in with that key")
    return 0


async def users_remove(ctx: Context, args: Args) -> int:
    name = args.word("NAME")
    args.done()
    await ctx.call(ctx.service.user_remove, name)
    ctx.out(f"-----> Removed {name}: their keys no longer log in; their apps stay")
    return 0
