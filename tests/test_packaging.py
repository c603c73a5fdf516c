"""One import namespace (ARCHITECTURE "The house"): everything we ship lives under
``hanzo_tasks``, so a user's own ``tasks.py``, ``routing/`` or ``cluster/`` never
shadows us and we never shadow them."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import textwrap
import tomllib
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The product folders and the import name each installs as.
FOLDERS = {
    "tasks": "hanzo_tasks",
    "cluster": "hanzo_tasks.cluster",
    "shard": "hanzo_tasks.shard",
    "replication": "hanzo_tasks.replication",
    "protocol": "hanzo_tasks.protocol",
    "routing": "hanzo_tasks.routing",
    "migration": "hanzo_tasks.migration",
}
# Folders of the repository whose code may import the product.
CODE_FOLDERS = [*FOLDERS, "tests", "chaos", "bench"]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_folder_is_listed_and_mapped() -> None:
    tool = _pyproject()["tool"]["setuptools"]
    assert tool["package-dir"] == {name: folder for folder, name in FOLDERS.items()}
    found = set()
    for folder, name in FOLDERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([name, *rel.parts]))
    assert sorted(tool["packages"]) == sorted(found)


def test_no_code_imports_a_bare_top_level_name() -> None:
    """``import cluster`` would work in this checkout (the folder is on sys.path)
    but not in an installed wheel; only ``hanzo_tasks.…`` names are ours."""
    offenders = []
    for folder in CODE_FOLDERS:
        for path in (ROOT / folder).rglob("*.py"):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    names = [node.module or ""]
                else:
                    continue
                for name in names:
                    if name.split(".")[0] in FOLDERS:
                        offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
    assert not offenders, offenders


_USER_PROJECT = {
    # A Celery project's conventional module, and folders named like ours.
    "tasks.py": "WHO = 'the user'\n",
    "routing/__init__.py": "WHO = 'the user'\n",
    "cluster/__init__.py": "WHO = 'the user'\n",
    "app.py": textwrap.dedent(
        """
        import sys
        import threading

        import cluster
        import routing
        import tasks
        import hanzo_tasks

        assert tasks.WHO == routing.WHO == cluster.WHO == "the user"
        assert "site-packages" in hanzo_tasks.__file__, hanzo_tasks.__file__

        done = threading.Event()
        seen = []

        def handle(payload):
            seen.append(payload)
            done.set()

        with hanzo_tasks.embed() as node:
            client = node.client()
            client.add("report.build", "1h", handle)
            client.now("report.build", {"n": 1})
            assert done.wait(60), "the worker never ran the task"
        assert seen == [{"n": 1}], seen
        # the user's modules are still theirs after the server code was loaded
        assert sys.modules["tasks"].WHO == sys.modules["cluster"].WHO == "the user"
        print("ok")
        """
    ),
}


@pytest.mark.timeout(300)
def test_the_wheel_runs_beside_a_project_with_its_own_tasks_routing_and_cluster(tmp_path: Path) -> None:
    # Built from a copy of the tracked files: a build in place would leave build/
    # and *.egg-info in the checkout, and untracked files must not reach the wheel.
    source = tmp_path / "source"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout
    for rel in filter(None, tracked.decode().split("\0")):
        if (ROOT / rel).is_file():
            (source / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, source / rel)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(source)],
        check=True, timeout=240, cwd=tmp_path,
    )
    (wheel,) = wheels.glob("hanzo_tasks-*.whl")

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    site = Path(subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # Dependencies come from this test's environment (a plain path entry: its .pth
    # files, our editable install among them, are not processed there).
    deps = [p for p in sys.path if p.endswith("site-packages")]
    (site / "deps.pth").write_text("\n".join(deps) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, timeout=240)

    top_level = {p.name for p in site.iterdir()}
    assert "hanzo_tasks" in top_level
    assert not top_level & set(FOLDERS) - {"hanzo_tasks"}, top_level

    project = tmp_path / "project"
    for rel, text in _USER_PROJECT.items():
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_text(text)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TASKS_URL")}
    out = subprocess.run([py, "app.py"], cwd=project, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip().endswith("ok")
