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
import secrets
import shlex
import stat
from collections.abc import Iterable, Iterator, Mapping

from tfedge.errors import OtaError, TargetError
from tfedge.targets import ssh

DIR_MODE = 0o755  # folders this backend creates, whatever the session's umask
OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH
FIX_HINT = (
    "on the device, make it a plain folder owned by the account you push as, writable by "
    "nobody else (chown USER DIR; chmod go-w DIR), or push to another directory"
)


class SftpFiles:
    """File operations in the directory ``root`` of a device, through SSH and SFTP.

    ``root`` is resolved (no symlinks in it); :meth:`check_trusted` refuses a directory
    another account could change under the push."""

    def __init__(self, loop, conn, sftp, target: ssh.SshTarget, root: str) -> None:
        self.loop, self.conn, self.sftp = loop, conn, sftp
        self.target, self.root = target, root
        self._uid: int | None = None

    def _call(self, coroutine):
        return self.loop.run_until_complete(coroutine)

    def abs(self, rel: str = "") -> str:
        """The absolute path of ``rel`` on the device."""
        return posixpath.join(self.root, rel) if rel else self.root

    def where(self, rel: str = "") -> str:
        return f"{self.target.label}{self.abs(rel)}"

    def makedirs(self, rel: str) -> None:
        import asyncssh

        if self.lstat(rel) is None:  # one round trip when it exists (checked by check_trusted)
            attrs = asyncssh.SFTPAttrs(permissions=DIR_MODE)
            self._call(self.sftp.makedirs(self.abs(rel), attrs=attrs, exist_ok=True))

    def lstat(self, rel: str):
        """The attributes of ``rel`` itself (a symlink is not followed); None when missing."""
        return self.lstat_many([self.abs(rel)])[0]

    def lstat_many(self, paths: list[str]) -> list:
        """The attributes of several absolute paths, in one round trip; None when missing."""
        import asyncssh

        async def one(path: str):
            try:
                return await self.sftp.lstat(path)
            except asyncssh.SFTPNoSuchFile:
                return None

        async def all_of() -> list:
            jobs = [one(p) for p in paths]
            if self._uid is None:  # in the same round trip
                jobs.append(self._read_uid())
            return list(await asyncio.gather(*jobs))[: len(paths)]

        return self._call(all_of())

    async def _read_uid(self) -> None:
        """Our user id: the owner of a file this session creates (then removes) in ``root``,
        over SFTP (an SSH command costs a process on the device); else ``id -u``."""
        import asyncssh

        probe = self.abs(f".uid.{secrets.token_hex(8)}.tmp")  # a leftover: clean_partials
        try:
            async with self.sftp.open(probe, "xb") as handle:
                attrs = await handle.stat()
            await self.sftp.remove(probe)
            if attrs.uid is not None:
                self._uid = attrs.uid
                return
        except asyncssh.SFTPError:
            pass  # not writable here (the check that follows says why): ask the shell
        result = await self.conn.run("id -u", check=False)
        text = (result.stdout or "").strip()
        if result.exit_status != 0 or not text.isdigit():
            raise TargetError(
                f"cannot read the login's user id on {self.target.label} (`id -u`: "
                f"{(result.stderr or text).strip()[-200:]})",
                "the device needs a POSIX shell with coreutils",
            )
        self._uid = int(text)

    @property
    def uid(self) -> int:
        """The user id this session runs as on the device."""
        if self._uid is None:
            self._call(self._read_uid())
        assert self._uid is not None
        return self._uid

    def check_trusted(self, *rels: str, create: bool = False) -> None:
        """Refuse unless ``root``, every folder above it and the folders ``rels`` in it are
        safe from other accounts: real folders (not symlinks), owned by this account or root,
        writable by nobody else (a folder above ``root`` may be world-writable with the sticky
        bit, like /tmp). ``create``: make missing ``rels`` (mode 0755), once the rest passed.

        Raises:
            OtaError: naming the first folder that fails, and why.
        """
        above, path = [], self.root
        while path != "/":
            path = posixpath.dirname(path)
            above.append(path)
        mine = [self.abs(r) for r in ("", *rels)]
        found = self.lstat_many(mine + above)
        missing = []
        for rel, path, attrs in zip(("", *rels, *above), mine + above, found):
            if attrs is None and create and rel and path in mine:
                missing.append(rel)
                continue
            self._check_folder(path, attrs, sticky_ok=path in above)
        for rel in missing:
            self.makedirs(rel)
        if missing:
            for rel, attrs in zip(missing, self.lstat_many([self.abs(r) for r in missing])):
                self._check_folder(self.abs(rel), attrs)

    def _check_folder(self, path: str, attrs, sticky_ok: bool = False, private: bool = False):
        where = f"{self.target.label}{path}"
        if attrs is None:
            raise OtaError(f"{where} is missing", "check the path; nothing was changed")
        mode = attrs.permissions or 0
        if stat.S_ISLNK(mode):
            raise OtaError(
                f"{where} is a symlink; refusing to write or delete through it", FIX_HINT
            )
        if not stat.S_ISDIR(mode):
            raise OtaError(f"{where} is not a directory", FIX_HINT)
        owners = (self.uid,) if private else (self.uid, 0)
        if attrs.uid not in owners:
            raise OtaError(
                f"{where} belongs to user id {attrs.uid}, not to the account pushing "
                f"(uid {self.uid}) or root; refusing to use it",
                FIX_HINT,
            )
        open_to = (stat.S_IRWXG | stat.S_IRWXO) if private else OTHERS_WRITE
        if mode & open_to and not (sticky_ok and mode & stat.S_ISVTX):
            raise OtaError(
                f"{where} is {'open' if private else 'writable'} to other users "
                f"(mode {stat.S_IMODE(mode):o}); refusing to use it",
                FIX_HINT,
            )

    def private_tempdir(self, parent: str = "/tmp") -> str:
        """A new folder in ``parent`` on the device that only this account can use, like
        ``mkdtemp``: a random name made by mkdir (fails if it exists) with mode 0700, then
        checked; its absolute path. The caller removes it (:meth:`remove_tree`)."""
        import asyncssh

        path = posixpath.join(parent, f"tfedge-push.{secrets.token_hex(16)}")
        try:
            attrs = asyncssh.SFTPAttrs(permissions=0o700)
            self._call(self.sftp.mkdir(path, attrs=attrs))
        except asyncssh.SFTPError as exc:
            raise TargetError(
                f"cannot make a private temporary folder in {parent} on {self.target.label}: "
                f"{exc.reason}",
                f"check that {parent} on the device exists, is writable and is not full",
            ) from exc
        attrs, parent_attrs = self.lstat_many([path, parent])
        try:
            self._check_folder(path, attrs, private=True)
            self._check_folder(parent, parent_attrs, sticky_ok=True)
        except OtaError:
            self.remove_tree(path)
            raise
        return path

    def put_many(self, pairs: Mapping[str, str | os.PathLike]) -> None:
        """Copy local files to absolute device paths, concurrently and without fsync (for
        files checked by their hash before use, never for the model directory)."""

        async def put_all() -> None:
            await asyncio.gather(
                *(self.sftp.put(os.fspath(local), remote) for remote, local in pairs.items())
            )

        self._call(put_all())

    def remove_tree(self, path: str) -> None:
        """``rm -rf`` an absolute path on the device (a private folder this session made)."""
        self.run(f"rm -rf -- {shlex.quote(path)}")

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
        """The link's target; None when ``rel`` is missing. Anything else there (a file, a
        folder) or an error reading it is an error, never "nothing installed"."""
        attrs = self.lstat(rel)
        if attrs is None:
            return None
        if not stat.S_ISLNK(attrs.permissions or 0):
            raise OtaError(
                f"{self.where(rel)} is not a symlink",
                "it was changed by hand: the model directory's `current` must be a symlink "
                "into versions/; fix or remove it on the device",
            )
        return self._call(self.sftp.readlink(self.abs(rel)))

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

    def run_with_input(self, command: str, chunks: Iterable[bytes]) -> tuple:
        """Run a shell command on the device with ``chunks`` as its standard input, sent as
        they come (each is sent before the next is made, with the channel's flow control);
        ``(asyncssh result with bytes stdout, bytes sent)``. A command that stops reading
        early ends the sending; its exit status says why."""

        async def feed():
            process = await self.conn.create_process(command, encoding=None)
            sent = 0
            try:
                for chunk in chunks:
                    process.stdin.write(chunk)
                    sent += len(chunk)
                    await process.stdin.drain()
                process.stdin.write_eof()
            except BrokenPipeError:
                pass  # the command exited before reading everything
            return await process.wait(check=False), sent

        return self._call(feed())


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
            with contextlib.suppress(asyncssh.Error, OSError):  # the connection is gone already
                loop.run_until_complete(_close(*session[:2]))
        _close_loop(loop)


async def _open(loop, target: ssh.SshTarget):
    connection = ssh.connect(target)
    conn = await connection.__aenter__()
    try:
        sftp = await conn.start_sftp_client()
        root = await sftp.realpath(await ssh.resolve_workdir(conn, sftp, target))
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
