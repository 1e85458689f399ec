#!/usr/bin/env python3
"""Writes the seed inputs of the `reader` fuzz target into seeds/reader/.

Seeds are genuine bundles in both input forms the target understands (see
fuzz_targets/reader.rs): the format-1 fixture as a whole file (first byte even),
and manifest + NUL + uncompressed tar (first byte odd), including archives with
GNU long names and PAX headers, so the fuzzer starts from every header kind the
reader accepts.
"""
import hashlib
import io
import json
import os
import struct
import subprocess
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "seeds", "reader")
FIXTURE = os.path.join(HERE, "..", "tests", "fixtures", "v1", "signed.bundle")


def manifest(entries):
    return {
        "format_version": 1,
        "kind": "tools",
        "version": "1.0.0",
        "platform": "linux-x86_64",
        "created": "2026-01-01T00:00:00Z",
        # The harness fills in the payload's true size and hash.
        "payload": {"compression": "zstd", "size": 0, "sha256": "0" * 64},
        "entries": entries,
    }


def parts_seed(name, members, tar_format):
    """members: (path, data or None for a directory)."""
    buf = io.BytesIO()
    entries = []
    with tarfile.open(fileobj=buf, mode="w", format=tar_format) as tar:
        for path, data in members:
            info = tarfile.TarInfo(path)
            info.mtime = 1767225600
            if data is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                entries.append({"type": "dir", "path": path, "mode": "0755"})
                tar.addfile(info)
            else:
                info.size = len(data)
                info.mode = 0o644
                entries.append({"type": "file", "path": path, "mode": "0644", "size": len(data),
                                "sha256": hashlib.sha256(data).hexdigest()})
                tar.addfile(info, io.BytesIO(data))
    body = json.dumps(manifest(entries), separators=(",", ":")).encode()
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(b"\x01" + body + b"\x00" + buf.getvalue())


def main():
    os.makedirs(OUT, exist_ok=True)
    bundle = open(FIXTURE, "rb").read()
    with open(os.path.join(OUT, "fixture-file"), "wb") as f:
        f.write(b"\x00" + bundle)
    manifest_len, signatures = struct.unpack("<II", bundle[12:20])
    payload = bundle[20 + manifest_len + 72 * signatures:]
    tar = subprocess.run(["zstd", "-dc"], input=payload, capture_output=True, check=True).stdout
    with open(os.path.join(OUT, "fixture-parts"), "wb") as f:
        f.write(b"\x01" + bundle[20:20 + manifest_len] + b"\x00" + tar)

    long_dir = "d" * 90
    members = [
        ("bin", None),
        ("bin/tool", b"#!/bin/sh\necho tool\n"),
        (long_dir, None),
        (long_dir + "/" + "f" * 80, b"x" * 700),
        ("empty", b""),
    ]
    parts_seed("gnu-long-names", members, tarfile.GNU_FORMAT)
    parts_seed("pax-headers", members, tarfile.PAX_FORMAT)
    parts_seed("ustar", members[:2] + [("empty", b"")], tarfile.USTAR_FORMAT)


if __name__ == "__main__":
    main()
