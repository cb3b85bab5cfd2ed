"""No orphans: a stage's kernel and its pool workers stop when their parent dies (lptlib.utils.exit_with_parent)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import process_alive, wait_for

ROOT = Path(__file__).resolve().parents[1]


def test_pool_workers_stop_when_the_process_that_owns_the_pool_is_killed(tmp_path):
    """SIGKILL of the kernel (the pool's owner, `workers: 2`): both workers stop within seconds instead of training
    on and overwriting checkpoints."""
    (tmp_path / "slow.py").write_text(
        textwrap.dedent(
            """
            import os, time
            from pathlib import Path

            def task(cfg, data, out):
                Path(out).write_text(str(os.getpid()))
                time.sleep(120)
            """
        )
    )
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        from lptlib.config import parse
        from lptlib.pool import run_tasks
        import slow
        cfg = parse(data={{"max_test_per_class": 5, "val_per_class": 2}})
        run_tasks(slow.task, [dict(cfg=cfg, out={str(tmp_path)!r} + f"/w{{i}}") for i in range(2)], workers=2)
        """
    )
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}"}
    owner = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=ROOT)
    try:
        wait_for(lambda: all((tmp_path / f"w{i}").is_file() for i in range(2)), timeout=120)
        workers = [int((tmp_path / f"w{i}").read_text()) for i in range(2)]
        assert all(process_alive(w) for w in workers)
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        wait_for(lambda: not any(process_alive(w) for w in workers), timeout=15)
    finally:
        owner.kill()


def test_exit_with_parent_stops_a_process_whose_parent_dies(tmp_path):
    """A stage's kernel calls it in `stage.start`: papermill killed, the kernel stops."""
    pid_file = tmp_path / "child"
    launcher = textwrap.dedent(
        f"""
        import os, subprocess, sys, time
        code = "import time; from lptlib.utils import exit_with_parent; exit_with_parent(0.1); " \\
            "open({str(pid_file)!r}, 'w').write(str(__import__('os').getpid())); time.sleep(120)"
        subprocess.Popen([sys.executable, "-c", code])
        while not os.path.exists({str(pid_file)!r}):
            time.sleep(0.05)
        os._exit(0)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", launcher], env=env, timeout=60, stdout=subprocess.DEVNULL)
    wait_for(lambda: pid_file.is_file() and pid_file.read_text(), timeout=10)
    wait_for(lambda: not process_alive(int(pid_file.read_text())), timeout=10)
