"""An interrupted run and a failed write lose nothing (issue 12, items 3 and 4).

Ctrl-C during an experiment: the experiments already finished stay in metrics.json,
no cache or figure is left half-written, one line on stderr, exit status 130.
A write that fails (disk full): one line, exit 2, the previous metrics.json intact.
"""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import OFFLINE_ENV, REPO


def _temp_files(out):
    return [str(p.relative_to(out)) for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_ctrl_c_keeps_finished_experiments_and_exits_130(tmp_path):
    out = tmp_path / "t5"
    proc = subprocess.Popen([sys.executable, str(REPO / "Task5.py"), "--smoke", "--out", str(out)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **OFFLINE_ENV},
                            # a shell's background job starts with SIGINT ignored, and Python keeps an
                            # ignored SIGINT: give the child the default, as a terminal would
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    metrics, done, deadline = out / "metrics.json", [], time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:  # wait for the first finished experiment
            if metrics.exists():
                done = list(json.loads(metrics.read_text())["experiments"])
                break
            time.sleep(0.05)
        assert done, "no experiment finished within 120 s"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-2000:]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "interrupted" in lines[0] and "Traceback" not in err, err[-2000:]
    kept = json.loads(metrics.read_text())["experiments"]
    assert set(done) <= set(kept), (done, list(kept))
    assert _temp_files(out) == []


def test_a_full_disk_is_one_line_and_keeps_the_previous_metrics(tmp_path, monkeypatch, capsys):
    import Task5

    out = tmp_path / "t5"
    Task5.main(["--smoke", "--experiments", "train", "--out", str(out)])
    before = (out / "metrics.json").read_bytes()
    capsys.readouterr()

    def disk_full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(SystemExit) as e:
        Task5.main(["--smoke", "--experiments", "train", "--fresh", "--out", str(out)])
    monkeypatch.undo()
    assert e.value.code == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "No space left on device" in err[0], err
    assert (out / "metrics.json").read_bytes() == before
    assert _temp_files(out) == []
