"""The SFTP backend of the device package's model-directory protocol, for ``tfedge push``.

:class:`SftpFiles` implements :class:`tfedge_device.modeldir.FileOps` over one asyncssh
connection and its SFTP session, so ``push``, ``rollback`` and ``status`` drive the very
:class:`~tfedge_device.modeldir.ModelDir` the agent uses on the device. What SFTP cannot do
runs as a command on the device: ``sha256sum`` (hashes are checked where the bytes are) and
``sync DIR`` (fsync of a directory). The operations are synchronous: each runs to completion
on the session's own event loop.

Connecting, host keys and the workdir are the benchmark harness's (:mod:`tfedge.targets.ssh`).

Example:
    >>> with open_model_dir(parse_target("ssh://pi@raspberrypi.local/srv/models/kws")) as files:
    ...     ModelDir(files).current_sha()
    '3f1c2a9d8e7b...'
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import posixpath
import shlex
from collections.abc import Iterator

from tfedge.errors import OtaError, TargetError
from tfedge.targets import ssh


class SftpFiles:
    """File operations in the directory ``root`` of a device, through SSH and SFTP."""

    def __init__(self, loop, conn, sftp, target: ssh.SshTarget, root: str) -> None:
        self.loop, self.conn, self.sftp = loop, conn, sftp
        self.target, self.root = target, root

    def _call(self, coroutine):
        return self.loop.run_until_complete(coroutine)

    def abs(self, rel: str = "") -> str:
        """The absolute path of ``rel`` on the device."""
        return posixpath.join(self.root, rel) if rel else self.root

    def where(self, rel: str = "") -> str:
        return f"{self.target.label}{self.abs(rel)}"

    def makedirs(self, rel: str) -> None:
        if not self._call(self.sftp.isdir(self.abs(rel))):  # one round trip when it exists
            self._call(self.sftp.makedirs(self.abs(rel), exist_ok=True))

    def listdir(self, rel: str) -> list[str]:
        import asyncssh

        try:
            names = self._call(self.sftp.listdir(self.abs(rel)))
        except asyncssh.SFTPNoSuchFile:
            return []
        return [n for n in names if n not in (".", "..")]

    def read_bytes(self, rel: str) -> bytes:
        import asyncssh

        async def read() -> bytes:
            async with self.sftp.open(self.abs(rel), "rb") as handle:
                return await handle.read()

        try:
            return self._call(read())
        except asyncssh.SFTPNoSuchFile as exc:
            raise FileNotFoundError(self.where(rel)) from exc

    def write_bytes(self, rel: str, data: bytes) -> None:
        async def write() -> None:
            async with self.sftp.open(self.abs(rel), "wb") as handle:
                await handle.write(data)
                await handle.fsync()

        self._call(write())

    def put(self, local: str | os.PathLike, rel: str) -> None:
        async def put() -> None:
            await self.sftp.put(os.fspath(local), self.abs(rel))
            async with self.sftp.open(self.abs(rel), "ab") as handle:
                await handle.fsync()

        self._call(put())

    def rename(self, src: str, dst: str) -> None:
        self._call(self.sftp.posix_rename(self.abs(src), self.abs(dst)))

    def symlink(self, target: str, rel: str) -> None:
        self._call(self.sftp.symlink(target, self.abs(rel)))

    def readlink(self, rel: str) -> str | None:
        import asyncssh

        try:
            return self._call(self.sftp.readlink(self.abs(rel)))
        except (asyncssh.SFTPNoSuchFile, asyncssh.SFTPFailure):  # missing, or not a link
            return None

    def remove(self, rel: str) -> None:
        import asyncssh

        with contextlib.suppress(asyncssh.SFTPNoSuchFile):  # already gone
            self._call(self.sftp.remove(self.abs(rel)))

    def sha256(self, rel: str) -> str | None:
        return self.sha256_many([rel]).get(rel)

    def sha256_many(self, rels: list[str]) -> dict[str, str]:
        """``{rel: sha256}`` of several files with one command on the device (missing: absent)."""
        found = self._call(ssh.remote_sha256(self.conn, [self.abs(r) for r in rels], self.target))
        return {rel: found[self.abs(rel)] for rel in rels if self.abs(rel) in found}

    def fsync_dir(self, *rels: str) -> None:
        """``sync DIR`` on the device opens and fsyncs each directory."""
        quoted = " ".join(shlex.quote(self.abs(r)) for r in rels or ("",))
        result = self.run(f"sync -- {quoted}")
        if result.exit_status != 0:
            raise OtaError(
                f"cannot fsync {quoted} on {self.target.label}: {(result.stderr or '').strip()}",
                "the device needs coreutils 8.24 or newer (any current Raspberry Pi OS has it)",
            )

    def free_bytes(self) -> int:
        stats = self._call(self.sftp.statvfs(self.root))
        return stats.bavail * stats.frsize

    def run(self, command: str):
        """Run a shell command on the device; its asyncssh result (never raises on exit status)."""
        return self._call(self.conn.run(command, check=False))


@contextlib.contextmanager
def open_model_dir(target: ssh.SshTarget) -> Iterator[SftpFiles]:
    """Connect to ``target`` and yield :class:`SftpFiles` rooted at its workdir (created).

    Raises:
        TargetError: host key, login or connection problems, also when the connection
            drops mid-operation (nothing is switched before the last step).
    """
    import asyncssh

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    session = None
    try:
        session = loop.run_until_complete(_open(loop, target))
        yield session[2]
    except (asyncssh.Error, ConnectionError, asyncio.IncompleteReadError) as exc:
        raise TargetError(
            f"the SSH connection failed mid-operation: {exc}",
            "nothing was switched; check the device and push again (leftovers are "
            "cleaned on the next push)",
        ) from exc
    finally:
        if session is not None:
            with contextlib.suppress(Exception):
                loop.run_until_complete(_close(*session[:2]))
        _close_loop(loop)


async def _open(loop, target: ssh.SshTarget):
    connection = ssh.connect(target)
    conn = await connection.__aenter__()
    try:
        sftp = await conn.start_sftp_client()
        root = await ssh.resolve_workdir(conn, sftp, target)
    except BaseException:
        await connection.__aexit__(None, None, None)
        raise
    return connection, sftp, SftpFiles(loop, conn, sftp, target, root)


async def _close(connection, sftp) -> None:
    sftp.exit()
    await connection.__aexit__(None, None, None)


def _close_loop(loop) -> None:
    try:
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        asyncio.set_event_loop(None)
        loop.close()
