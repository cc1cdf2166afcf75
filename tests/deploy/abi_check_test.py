#!/usr/bin/env python3
"""deploy/gpu/abi_check.py against real Debian 12 libraries and stand-ins for an older node's C/C++ runtime.

The prefix holds two of the libraries .gpu-deps ships (copied from this machine, where deploy/install-deps.sh put
them): libspdlog (needs GLIBCXX_3.4.30, i.e. GCC 12's libstdc++) and libabsl_base (needs GLIBC_2.34). The old
runtimes are tiny shared libraries built here with a version script that defines the symbol versions of GCC 11's
libstdc++ (up to GLIBCXX_3.4.29 / CXXABI_1.3.13) and of glibc 2.33.
"""
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CHECK = os.path.join(ROOT, "deploy", "gpu", "abi_check.py")
LIBDIR = "/usr/lib/x86_64-linux-gnu"


def fake_runtime(d, name, versions):
    """A shared library NAME that defines exactly VERSIONS (one exported function each)."""
    src, script, out = (os.path.join(d, name + ext) for ext in (".c", ".map", ""))
    with open(src, "w") as f:
        f.write("".join(f"void sym{i}(void) {{}}\n" for i in range(len(versions))))
    with open(script, "w") as f:
        for i, v in enumerate(versions):
            f.write(f"{v} {{ global: sym{i}; {'local: *; ' if i == 0 else ''}}};\n")
    subprocess.run([os.environ.get("CC", "cc"), "-shared", "-fPIC", "-o", out, src,
                    f"-Wl,--version-script={script}"], check=True)
    return out


def run(*args):
    p = subprocess.run([sys.executable, CHECK, *args], capture_output=True, text=True)
    return p.returncode, p.stdout + p.stderr


class AbiCheck(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="abi-check-")
        lib = os.path.join(cls.tmp, "prefix", "usr", "lib", "x86_64-linux-gnu")
        os.makedirs(lib)
        for pattern in ("libspdlog.so.1*", "libabsl_base.so.2*"):
            found = sorted(glob.glob(os.path.join(LIBDIR, pattern)))
            if not found:
                raise RuntimeError(f"{pattern} not installed (deploy/install-deps.sh installs it)")
            shutil.copy(found[0], lib)
        cls.prefix = os.path.join(cls.tmp, "prefix")
        cls.old_cxx = fake_runtime(cls.tmp, "libstdc++-gcc11.so.6",
                                   ["GLIBCXX_3.4", "GLIBCXX_3.4.29", "CXXABI_1.3", "CXXABI_1.3.13"])
        cls.old_libc = fake_runtime(cls.tmp, "libc-2.33.so.6", ["GLIBC_2.2.5", "GLIBC_2.33"])

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_this_machine_runs_what_it_built(self):
        rc, out = run(self.prefix)
        self.assertEqual(rc, 0, out)
        self.assertIn("GLIBCXX: needs 3.4.30 (libspdlog", out)
        self.assertIn("GLIBC: needs 2.34 (libabsl_base", out)
        self.assertIn("abi_check: ok", out)

    def test_gcc11_libstdcxx_is_named_as_too_old(self):
        rc, out = run(self.prefix, "--libstdcxx", self.old_cxx)
        self.assertEqual(rc, 1, out)
        self.assertIn("GLIBCXX_3.4.30 (needed by libspdlog", out)
        self.assertIn("provides up to 3.4.29", out)
        self.assertIn("glibc >= 2.34 and the libstdc++ of GCC >= 12", out)
        self.assertNotIn("GLIBC_2.34", out)  # the real libc is new enough

    def test_glibc_233_is_named_as_too_old(self):
        rc, out = run(self.prefix, "--libc", self.old_libc)
        self.assertEqual(rc, 1, out)
        self.assertIn("GLIBC_2.34 (needed by libabsl_base", out)
        self.assertIn("provides up to 2.33", out)

    def test_an_empty_prefix_is_a_usage_error(self):
        empty = os.path.join(self.tmp, "empty")
        os.makedirs(empty, exist_ok=True)
        rc, out = run(empty)
        self.assertEqual(rc, 2, out)
        self.assertIn("no ELF files", out)


if __name__ == "__main__":
    unittest.main()
