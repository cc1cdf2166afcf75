#!/usr/bin/env python3
"""Unpacks .deb files into a directory without dpkg (for GPU nodes that are not Debian-based).

A .deb is an ar(1) archive: debian-binary, control.tar.*, data.tar.{xz,zst,gz}. Only data.tar is extracted, into
DEST (like `dpkg -x`), keeping symlinks; nothing is ever written outside DEST (members with absolute paths or '..'
are refused).

  python3 deploy/gpu/unpack_debs.py DEST a.deb b.deb ...
"""
import io
import lzma
import os
import sys
import tarfile


def ar_members(path):
    with open(path, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise ValueError(f"{path}: not an ar archive")
        while True:
            hdr = f.read(60)
            if len(hdr) < 60:
                return
            name = hdr[:16].decode().strip().rstrip("/")
            size = int(hdr[48:58].decode().strip())
            data = f.read(size)
            if size % 2:
                f.read(1)
            yield name, data


def safe_members(tf, dest):
    root = os.path.realpath(dest)
    for m in tf.getmembers():
        target = os.path.realpath(os.path.join(dest, m.name))
        if not (target == root or target.startswith(root + os.sep)):
            raise ValueError(f"refusing member outside destination: {m.name}")
        yield m


def unpack(deb, dest):
    for name, data in ar_members(deb):
        if not name.startswith("data.tar"):
            continue
        if name.endswith(".xz"):
            raw = lzma.decompress(data)
        elif name.endswith(".zst"):
            try:
                import zstandard  # noqa: F401
            except ImportError:
                raise SystemExit(f"{deb}: {name} needs the zstandard module (or dpkg)")
            import zstandard
            raw = zstandard.ZstdDecompressor().decompress(data, max_output_size=1 << 31)
        else:
            raw = data  # .gz / plain: tarfile handles gzip itself
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:*") as tf:
            tf.extractall(dest, members=list(safe_members(tf, dest)))
        return
    raise SystemExit(f"{deb}: no data.tar member")


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    dest = sys.argv[1]
    os.makedirs(dest, exist_ok=True)
    for deb in sys.argv[2:]:
        unpack(deb, dest)


if __name__ == "__main__":
    main()
