"""Every notebook runs top to bottom in QUICK mode (tiny random model, few prompts).

The kernel is the ``python3`` kernelspec; where none is installed, the test installs one for
the running interpreter (``ipykernel.kernelspec.install``) so that a fresh machine works.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
TIMEOUT_S = 600  # per cell; a QUICK notebook takes well under a minute on an idle machine


def _kernel_name() -> str:
    """``python3`` if jupyter can find it, else install it for this interpreter first."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        from ipykernel.kernelspec import install

        install(user=True, kernel_name="python3", display_name=f"Python 3 ({sys.executable})")
    return "python3"


def test_notebooks_exist():
    names = {p.name for p in NOTEBOOKS}
    assert {
        "01_gate_structure.ipynb",
        "02_neuron_distribution.ipynb",
        "03_sparsity_faithfulness.ipynb",
    } <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_committed_without_outputs(path):
    book = nbformat.read(path, as_version=4)
    for cell in book.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_quick_mode(path, tmp_path, monkeypatch):
    monkeypatch.setenv("CLUE_MI_QUICK", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("CLUE_MI_FIGURES", str(tmp_path / "figures"))
    # conftest already points CLUE_MI_CACHE at a fresh folder under tmp_path.
    assert os.environ["CLUE_MI_CACHE"].startswith(str(tmp_path.parent))
    book = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        book,
        timeout=TIMEOUT_S,
        kernel_name=_kernel_name(),
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    client.execute()
    text = "".join(
        out.get("text", "")
        for cell in book.cells
        if cell.cell_type == "code"
        for out in cell.outputs
    )
    assert "QUICK=True" in text
    # Each notebook saves at least one figure, and every saved figure is a real PNG.
    figures = sorted((tmp_path / "figures").glob("*.png"))
    assert figures, f"{path.name} saved no figure"
    for fig in figures:
        assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Quick runs never touch the committed figures folder.
    assert not any(f.parent == NOTEBOOK_DIR / "figures" for f in figures)
