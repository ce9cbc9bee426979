"""The notebooks execute top to bottom with nbclient: against a small synthetic workspace (every
finding, no planted truth) and against a demo workspace (slow: builds one with the real stages).
They must import only from the packages."""

from __future__ import annotations

import os
import re
from pathlib import Path

import nbformat
import pytest

from tests.report_fixtures import demo_workspace, make_workspace

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
ALLOWED_IMPORTS = {
    "os",
    "pathlib",
    "matplotlib",
    "numpy",
    "pandas",
    "IPython",
    "audit",
    "pipelines",
    "detectors",
}


def _execute(path: Path, workspace: Path, cwd: Path) -> nbformat.NotebookNode:
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    env = {"LAION_AUDIT_WORKSPACE": str(workspace)}
    old = {k: os.environ.get(k) for k in (*env, "MPLBACKEND")}
    os.environ.pop("MPLBACKEND", None)  # the kernel's inline backend shows the figures
    os.environ.update(env)  # the kernel inherits the environment
    try:
        NotebookClient(
            nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
        ).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def _outputs(nb: nbformat.NotebookNode) -> str:
    text = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            text.append(out.get("text", ""))
            text.append(str(out.get("data", {}).get("text/plain", "")))
    return "\n".join(text)


def test_there_are_three_notebooks_importing_only_the_packages() -> None:
    assert [p.name for p in NOTEBOOKS] == [
        "01_explore_workspace.ipynb",
        "02_replication_case_study.ipynb",
        "03_poison_triage.ipynb",
    ]
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
            f"{path.name}: commit notebooks without outputs"
        )
        for cell in nb.cells:
            if cell.cell_type != "code":
                continue
            for mod in re.findall(r"^\s*(?:from|import)\s+([\w.]+)", cell.source, re.M):
                assert mod.split(".")[0] in ALLOWED_IMPORTS, f"{path.name} imports {mod}"


@pytest.fixture(scope="module")
def synthetic_ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_workspace(tmp_path_factory.mktemp("nb") / "ws").root


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_on_synthetic_workspace(
    path: Path, synthetic_ws: Path, tmp_path: Path
) -> None:
    nb = _execute(path, synthetic_ws, tmp_path)
    out = _outputs(nb)
    assert "no planted truth in this workspace" in out
    images = sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
    assert images >= 2, f"{path.name} showed {images} figures or image grids"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_on_demo_workspace(
    path: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    ws = demo_workspace(tmp_path_factory)
    nb = _execute(path, ws, tmp_path)
    assert "no planted truth" not in _outputs(nb)  # the demo's planted truth is compared
