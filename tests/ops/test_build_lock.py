"""The fused CPU scan builds once per source hash; a build lock left by a killed process never hangs a later one,
and a process that must wait says what it waits on within seconds."""
import fcntl
import os
import subprocess
import sys
import time

import pytest

from bmojo.ops import scan_cpp
from bmojo.utils.build import build_folder

pytestmark = pytest.mark.skipif(not scan_cpp.available(), reason="no C++ compiler: no fused CPU kernels")
LOAD = "import logging; logging.basicConfig(); from bmojo.ops import scan_cpp; assert scan_cpp.available()"


def _folder():
    return build_folder("bmojo_selective_scan", scan_cpp.SOURCE, scan_cpp.FLAGS)


def _python(code, **kw):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kw)


def test_a_lock_file_left_by_a_killed_build_does_not_hang_the_next(tmp_path):
    (_folder() / "lock").write_text("")  # what torch's loader leaves when its process dies mid-build
    p = _python(LOAD)
    _, err = p.communicate(timeout=120)  # before the fix: waited on it forever
    assert p.returncode == 0, err
    assert not (_folder() / "lock").exists()


def test_a_process_that_waits_says_what_it_waits_on(tmp_path):
    with open(_folder() / "bmojo.lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # another builder holds the lock
        p = _python(LOAD)
        time.sleep(6)
        assert p.poll() is None
        fcntl.flock(f, fcntl.LOCK_UN)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert "waiting for the build of bmojo_selective_scan" in err and "bmojo.lock" in err


def test_the_build_folder_depends_on_the_source_not_the_checkout(tmp_path):
    copy = tmp_path / "elsewhere" / scan_cpp.SOURCE.name
    copy.parent.mkdir()
    copy.write_bytes(scan_cpp.SOURCE.read_bytes())
    assert build_folder("bmojo_selective_scan", copy, scan_cpp.FLAGS) == _folder()
    copy.write_bytes(scan_cpp.SOURCE.read_bytes() + b"\n// changed\n")
    assert build_folder("bmojo_selective_scan", copy, scan_cpp.FLAGS) != _folder()
