"""What importing mlit sets in a command's process (python -m mlit.*), and leaves alone in a
program that imports it as a library or where the user set it: OpenMP's short idle spin and
malloc keeping the memory it frees (mlit/__init__.py)."""

import os
import subprocess
import sys

import pytest

import mlit

# a fresh process: sys.argv[0] is "-m" while python -m finds a command (mlit imports then)
PROBE = """
import ctypes, os, sys
sys.argv[:1] = [sys.argv[1]]
import mlit
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]

def resident():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

size = 64 << 20  # over glibc's largest threshold for a block of its own (32 MiB)
block = libc.malloc(size)
ctypes.memset(block, 1, size)
held = resident()
libc.free(block)
print(os.environ.get("GOMP_SPINCOUNT"), (held - resident()) >> 20)
"""
CLEAN = {k: v for k, v in os.environ.items()
         if k not in (*mlit.OPENMP_SETTINGS, *mlit.MALLOC_SETTINGS)}


def probe(argv0: str, **env) -> tuple[str, int]:
    """(GOMP_SPINCOUNT, MiB the process gave back when it freed a 64 MiB block)."""
    done = subprocess.run([sys.executable, "-c", PROBE, argv0], capture_output=True, text=True,
                          env={**CLEAN, **env}, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    spin, returned = done.stdout.split()
    return spin, int(returned)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc, /proc")
def test_a_command_spins_briefly_and_keeps_the_memory_it_frees():
    spin, returned = probe("-m")
    assert spin == "4000" and returned < 8


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc, /proc")
@pytest.mark.parametrize("argv0, env", [
    ("-c", {}),  # a library user's program
    ("-m", {"MALLOC_TRIM_THRESHOLD_": "131072"}),  # the user's own malloc setting
    ("-m", {"OMP_WAIT_POLICY": "PASSIVE"}),  # the user's own OpenMP setting
], ids=["library", "own-malloc-setting", "own-openmp-setting"])
def test_a_library_and_the_users_own_settings_are_left_alone(argv0, env):
    spin, returned = probe(argv0, **env)
    assert spin == ("4000" if argv0 == "-m" and "OMP_WAIT_POLICY" not in env else "None")
    if "MALLOC_TRIM_THRESHOLD_" in env or argv0 == "-c":
        assert returned > 56  # glibc's default: the block goes back to the system when freed
    else:
        assert returned < 8
