"""The run follower: one process on the run's machine that follows all of a run's record files and sends what
they gain over its stdout, framed by file and byte offset, so that one SSH channel serves one run.

Standard library only, and plain enough for the python3 of any login node (3.6 and later): it is shipped in
every run bundle (code/remote/job/follow.py) and started by the app's streamer (remote/stream.py) as
`python3 -u follow.py RUN_DIR NAME=OFFSET ...`, each file from the byte offset the run store holds for it.

Frames (ASCII header line, then the payload):
    TDFOLLOW <version>\\n                  first, once: the protocol this follower speaks
    D <index> <offset> <length>\\n<bytes>  bytes of file <index> (its place on the command line) from <offset>
    T <index> <size>\\n                    that file shrank below what was sent, or was replaced: it is
                                          followed again from byte 0
    H\\n                                   nothing new for HEARTBEAT_S: the follower is alive
The receiver aligns bytes by offset and commits records and offset together (core/store.py ingest), so a
follower restarted from the stored offsets (a dropped link, an sshd restart) sends nothing twice.

Change detection: inotify on the run directory where the kernel offers it (ctypes, no dependency), so a line
the job writes on this machine goes out at once; and a stat of every file every POLL_S, which is what catches
writes from other nodes on a shared file system (NFS and Lustre send no inotify events across nodes). The
follower exits when its stdout closes (the channel ended), noticed at once through poll().
"""

import argparse
import os
import select
import struct
import sys
import time
from pathlib import Path

PROTOCOL_VERSION = 1
HELLO = b"TDFOLLOW"
POLL_S = 0.5  # stat every file this often (shared file systems: no inotify events from other nodes)
HEARTBEAT_S = 5.0
CHUNK = 1 << 20  # bytes per frame at most
# inotify(7) masks: content written, a file created or renamed into the directory
_IN_MODIFY, _IN_MOVED_TO, _IN_CREATE = 0x2, 0x80, 0x100


class _File:
    def __init__(self, index, path, offset):
        self.index = index
        self.path = path
        self.pos = offset
        self.fd = None  # kept open while the file is the same one (its inode)
        self.ino = None


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class Follower:
    def __init__(self, run_dir, starts, out_fd=1, poll_s=POLL_S, heartbeat_s=HEARTBEAT_S):
        self.run_dir = run_dir
        self.files = [_File(i, Path(run_dir) / name, offset) for i, (name, offset) in enumerate(starts)]
        self.by_name = {os.fsencode(name): self.files[i] for i, (name, _offset) in enumerate(starts)}
        self.out_fd = out_fd
        self.poll_s = poll_s
        self.heartbeat_s = heartbeat_s
        self.last_sent = time.monotonic()

    def send(self, data):
        _write_all(self.out_fd, data)
        self.last_sent = time.monotonic()

    def reopen(self, f):
        """Open the file, or notice that its name now holds another file (replaced): True when open."""
        try:
            ino = f.path.stat().st_ino
        except OSError:
            return f.fd is not None  # not written yet (or gone for a moment while replaced)
        if f.fd is not None and ino == f.ino:
            return True
        try:
            fd = os.open(f.path, os.O_RDONLY)
        except OSError:
            return f.fd is not None
        if f.fd is not None:
            os.close(f.fd)
            self.restart(f, 0)  # replaced: the new file from its start
        f.fd, f.ino = fd, os.fstat(fd).st_ino
        return True

    def restart(self, f, size):
        self.send(f"T {f.index} {size}\n".encode())
        f.pos = 0

    def read(self, f):
        """Send what the file gained (from an open file: one fstat and one pread per read)."""
        size = os.fstat(f.fd).st_size
        if size < f.pos:  # truncated below what was sent: follow the new content from its start
            self.restart(f, size)
        while f.pos < size:
            data = os.pread(f.fd, min(CHUNK, size - f.pos), f.pos)
            if not data:
                break
            self.send(f"D {f.index} {f.pos} {len(data)}\n".encode() + data)
            f.pos += len(data)

    def scan(self):
        """Send what every file gained since the last scan."""
        for f in self.files:
            if self.reopen(f):
                self.read(f)

    def on_events(self, watch):
        """Send what the files named by pending inotify events gained: a write is read from the open file;
        a file created or renamed into place is opened first (it may replace the one followed)."""
        done = set()
        for name, mask in _events(watch):
            f = self.by_name.get(name)
            if f is None or f.index in done:
                continue
            done.add(f.index)
            if (f.fd is None or mask & (_IN_CREATE | _IN_MOVED_TO)) and not self.reopen(f):
                continue
            self.read(f)

    def run(self):
        self.send(f"{HELLO.decode()} {PROTOCOL_VERSION}\n".encode())
        poller = select.poll()
        # Only errors are asked for on stdout: POLLERR / POLLHUP once the reading side (sshd) has closed it.
        poller.register(self.out_fd, select.POLLERR | select.POLLHUP)
        watch = _inotify(self.run_dir)
        if watch is not None:
            poller.register(watch, select.POLLIN)
        self.scan()
        next_scan = time.monotonic() + self.poll_s
        while True:
            for fd, event in poller.poll(max(0, int((next_scan - time.monotonic()) * 1000))):
                if fd == self.out_fd and event & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
                    return 0
                if fd == watch:
                    self.on_events(watch)
            now = time.monotonic()
            if now >= next_scan:  # every file, also those another node writes (no inotify event for them)
                self.scan()
                next_scan = now + self.poll_s
            if now - self.last_sent >= self.heartbeat_s:
                self.send(b"H\n")


def _inotify(directory):
    """A non-blocking inotify descriptor watching `directory`, or None where the kernel has none."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            return None
        wd = libc.inotify_add_watch(fd, os.fsencode(directory), _IN_MODIFY | _IN_MOVED_TO | _IN_CREATE)
        if wd < 0:
            os.close(fd)
            return None
        return fd
    except (OSError, AttributeError):  # no libc symbol (not Linux): polling alone
        return None


def _events(fd):
    """(name, mask) of the pending inotify events (struct inotify_event: wd, mask, cookie, len, name)."""
    names = []
    size = 65536
    while size == 65536:  # a full buffer: more may be pending
        try:
            buf = os.read(fd, 65536)
        except BlockingIOError:
            break
        size = len(buf)
        off = 0
        while off + 16 <= size:
            _wd, mask, _cookie, length = struct.unpack_from("iIII", buf, off)
            names.append((buf[off + 16 : off + 16 + length].rstrip(b"\0"), mask))
            off += 16 + length
    return names


class FrameDecoder:
    """The receiving side: bytes in, frames out (('hello', version) / ('data', index, offset, bytes) /
    ('truncated', index, size) / ('heartbeat',))."""

    def __init__(self):
        self._buf = bytearray()

    def feed(self, data):
        self._buf += data
        frames = []
        while True:
            cut = self._buf.find(b"\n")
            if cut < 0:
                if len(self._buf) > 4096:
                    raise ValueError(f"follower frame header too long: {bytes(self._buf[:80])!r}")
                break
            parts = bytes(self._buf[:cut]).split()
            kind = parts[0] if parts else b""
            if kind == b"D":
                index, offset, length = int(parts[1]), int(parts[2]), int(parts[3])
                if len(self._buf) < cut + 1 + length:
                    break  # the payload has not all arrived
                frames.append(("data", index, offset, bytes(self._buf[cut + 1 : cut + 1 + length])))
                del self._buf[: cut + 1 + length]
                continue
            del self._buf[: cut + 1]
            if kind == b"T":
                frames.append(("truncated", int(parts[1]), int(parts[2])))
            elif kind == b"H":
                frames.append(("heartbeat",))
            elif kind == HELLO:
                frames.append(("hello", int(parts[1])))
            else:
                raise ValueError(f"unknown follower frame {bytes(parts[0] if parts else b'')!r}")
        return frames


def main(argv=None):
    parser = argparse.ArgumentParser(description="Follow a run's record files (TuneDeck).")
    parser.add_argument("--poll", type=float, default=POLL_S, help="seconds between stats of every file")
    parser.add_argument("--heartbeat", type=float, default=HEARTBEAT_S)
    parser.add_argument("run_dir")
    parser.add_argument("files", nargs="+", metavar="NAME=OFFSET")
    args = parser.parse_args(argv)
    starts = []
    for spec in args.files:
        name, _, offset = spec.rpartition("=")
        starts.append((name, int(offset)))
    try:
        return Follower(args.run_dir, starts, poll_s=args.poll, heartbeat_s=args.heartbeat).run()
    except BrokenPipeError:  # the channel closed while a frame was being written
        return 0
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
