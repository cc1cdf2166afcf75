#!/usr/bin/env python3
"""Can this machine run the Debian 12 libraries unpacked from .gpu-deps? Checked before anything is built.

The .deb prefix holds libraries and tools built on Debian 12 (gRPC, protobuf, Abseil, spdlog, ...). They need the
node's C library and C++ runtime to define every symbol version they were linked against: GLIBC_x.y (libc.so.6),
GLIBCXX_3.4.n and CXXABI_1.3.n (libstdc++.so.6). A node that is too old (for Debian 12's set: glibc < 2.34, or a
libstdc++ older than GCC 12's) would otherwise fail minutes later with a linker error about some hidden symbol
version or a protoc that does not start; this says at once what is needed, what the node has and which files ask.

  abi_check.py PREFIX [--libc PATH] [--libstdcxx PATH ...]

PREFIX is the unpacked prefix (its usr/lib/x86_64-linux-gnu and usr/bin are scanned). --libc / --libstdcxx name the
node's libraries (default: what the dynamic loader finds, plus the libstdc++ the C++ compiler links, if different).
Version information is read with readelf (binutils, present wherever a C++ compiler is). Exit status: 0 the node
provides every version; 1 it does not (the message says what is missing); 2 usage error or nothing to check.
"""
import argparse
import functools
import os
import re
import shutil
import subprocess
import sys

FAMILIES = {"GLIBC": "libc.so.6", "GLIBCXX": "libstdc++.so.6", "CXXABI": "libstdc++.so.6"}
NAME_RE = re.compile(r"Name: ((GLIBC|GLIBCXX|CXXABI)_([0-9.]+))\b")


def vkey(v):
    return tuple(int(x) for x in v.split(".") if x)


@functools.lru_cache(maxsize=None)  # the node's libstdc++ is asked for GLIBCXX and for CXXABI
def version_sections(path):
    """(defined, needed): the symbol versions an ELF file defines and the ones it needs from others."""
    out = subprocess.run(["readelf", "-V", "-W", path], capture_output=True, text=True).stdout
    defined, needed, section = set(), set(), None
    for line in out.splitlines():
        if line.startswith("Version definition section"):
            section = defined
        elif line.startswith("Version needs section"):
            section = needed
        elif line.startswith("Version symbols section"):
            section = None
        elif section is not None:
            for m in NAME_RE.finditer(line):
                section.add(m.group(1))
    return defined, needed


def is_elf(path):
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def prefix_files(prefix):
    roots = [os.path.join(prefix, "usr", "lib", "x86_64-linux-gnu"), os.path.join(prefix, "usr", "bin")]
    for root in roots:
        for d, _, names in os.walk(root):
            for n in sorted(names):
                p = os.path.join(d, n)
                if os.path.isfile(p) and not os.path.islink(p) and is_elf(p):
                    yield p


def loader_path(soname):
    """Where the dynamic loader finds SONAME for x86-64 (ldconfig's cache, then the usual directories)."""
    for ldconfig in ("ldconfig", "/sbin/ldconfig", "/usr/sbin/ldconfig"):
        exe = shutil.which(ldconfig) or (ldconfig if os.path.isfile(ldconfig) else None)
        if not exe:
            continue
        out = subprocess.run([exe, "-p"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            parts = line.split()
            if parts and parts[0] == soname and "x86-64" in line:
                return parts[-1]
        break
    for d in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64"):
        if os.path.exists(os.path.join(d, soname)):
            return os.path.join(d, soname)
    return None


def compiler_libstdcxx():
    """The libstdc++.so.6 the C++ compiler links against (differs from the loader's under e.g. a toolset GCC)."""
    cxx = os.environ.get("CXX") or "c++"
    try:
        out = subprocess.run([cxx, "-print-file-name=libstdc++.so.6"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return None
    return out if os.path.isabs(out) and os.path.exists(out) else None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("prefix")
    ap.add_argument("--libc", help="the node's libc.so.6 (default: the loader's)")
    ap.add_argument("--libstdcxx", action="append", help="a libstdc++.so.6 the build uses (repeatable)")
    a = ap.parse_args()
    if not shutil.which("readelf"):
        print("abi_check: WARNING: no readelf on this machine: the prefix's symbol versions are not checked")
        return 0

    # What the prefix needs: per family, the highest version and the files that need it.
    need = {}
    files = list(prefix_files(a.prefix))
    if not files:
        print(f"abi_check: no ELF files under {a.prefix}/usr/lib/x86_64-linux-gnu or usr/bin", file=sys.stderr)
        return 2
    for p in files:
        for name in version_sections(p)[1]:
            fam, ver = name.split("_", 1)
            best = need.get(fam)
            if best is None or vkey(ver) > vkey(best[0]):
                need[fam] = (ver, [os.path.relpath(p, a.prefix)])
            elif vkey(ver) == vkey(best[0]):
                best[1].append(os.path.relpath(p, a.prefix))

    # What the node has.
    libc = a.libc or loader_path("libc.so.6")
    cxx_libs = a.libstdcxx or [p for p in (loader_path("libstdc++.so.6"), compiler_libstdcxx()) if p]
    cxx_libs = list(dict.fromkeys(os.path.realpath(p) for p in cxx_libs))
    providers = {"GLIBC": [libc] if libc else [], "GLIBCXX": cxx_libs, "CXXABI": cxx_libs}

    print(f"abi_check: {len(files)} ELF files in the prefix")
    missing = []
    for fam in ("GLIBC", "GLIBCXX", "CXXABI"):
        if fam not in need:
            continue
        ver, who = need[fam]
        shown = ", ".join(sorted(os.path.basename(w) for w in who)[:4]) + (" ..." if len(who) > 4 else "")
        if not providers[fam]:
            missing.append(f"{fam}_{ver}: no {FAMILIES[fam]} found on this machine")
            continue
        for lib in providers[fam]:
            have = sorted((n.split("_", 1)[1] for n in version_sections(lib)[0] if n.startswith(fam + "_")), key=vkey)
            top = have[-1] if have else "none"
            ok = bool(have) and vkey(top) >= vkey(ver)
            print(f"  {fam}: needs {ver} ({shown}); {lib} provides up to {top}: {'ok' if ok else 'TOO OLD'}")
            if not ok:
                missing.append(f"{fam}_{ver} (needed by {shown}) but {lib} provides up to {top}")
    if missing:
        print("abi_check: ERROR: this machine's C/C++ runtime is older than the Debian 12 libraries in .gpu-deps need:",
              file=sys.stderr)
        for m in missing:
            print(f"  - {m}", file=sys.stderr)
        print("  Debian 12's set needs glibc >= 2.34 and the libstdc++ of GCC >= 12 (Ubuntu 22.04 or newer, Debian 12"
              " or newer have both). On an older node, build in such a container image instead.", file=sys.stderr)
        return 1
    print("abi_check: ok: the node's libc and libstdc++ provide every symbol version the prefix needs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
