"""The paper's fine-tuning rows (DESIGN §8): GA, NPO and PO on all weights, with the forget loss
alone and with + lam * retain loss, on the same trainer and step budget as every other row."""

from __future__ import annotations

import pytest
import torch

from clue_mi import masks as M
from clue_mi.experiment import FINETUNE, KNOWN_METHODS, METHODS, RunConfig, run_method
from clue_mi.pipeline import PipelineConfig, load_tasks
from clue_mi.report import method_label


@pytest.fixture(scope="module")
def setup(tiny):
    cfg = RunConfig(
        pipeline=PipelineConfig(retain=("ioi",), n=8, n_eval=8),
        model="tiny-llama", loss="po", lr=1e-3, epochs=(1, 1), batch_size=4,
    )  # fmt: skip
    return cfg, load_tasks(tiny, cfg.pipeline)


def _train(model, method: str, cfg, task_data) -> tuple[dict, dict[str, torch.Tensor]]:
    """Run one method from the current weights; return its row and the weights it left."""
    row = run_method(method, model, task_data, [], {"forget": {}, "conflict": {}}, cfg)
    return row, {n: p.detach().clone() for n, p in M.hf_parameters(model).items()}


def _restore(model, weights: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for n, p in M.hf_parameters(model).items():
            p.copy_(weights[n])


def test_rows_are_known_but_not_default():
    assert set(FINETUNE) == {"ga", "npo", "po", "ga_retain", "npo_retain", "po_retain"}
    assert not set(FINETUNE) & set(METHODS) and set(FINETUNE) <= set(KNOWN_METHODS)
    assert RunConfig(methods=("clue", "npo_retain")).methods == ("clue", "npo_retain")
    with pytest.raises(ValueError, match="npo_retain"):  # the error lists the rows
        RunConfig(methods=("sgd",))
    assert method_label("ga", "po") == "GA on all weights, forget loss only"
    assert method_label("npo_retain", "po") == "NPO on all weights + retain loss"


def test_each_row_trains_its_own_loss_on_every_weight(restored_tiny, setup):
    cfg, task_data = setup
    model = restored_tiny
    original = {n: p.detach().clone() for n, p in M.hf_parameters(model).items()}
    rows, weights = {}, {}
    for method in ("full", *FINETUNE):
        _restore(model, original)
        rows[method], weights[method] = _train(model, method, cfg, task_data)
    # One step budget for every row, every weight in the mask.
    assert len({r["steps"] for r in rows.values()}) == 1 and rows["full"]["steps"] > 0
    assert all(r["unlearned_ratio"] == 1.0 for r in rows.values())
    # The row's own loss, not the run's (PO): GA's loss is -NLL < 0, PO's and NPO's are > 0.
    assert rows["ga"]["final_loss"] < 0 < rows["po"]["final_loss"]
    assert rows["npo"]["final_loss"] > 0
    # "full" is the run's loss (PO) + retain loss on all weights: "po_retain" is the same run.
    for n in original:
        assert torch.equal(weights["po_retain"][n], weights["full"][n]), n
    # The retain loss is really added in the *_retain rows, and really absent in the others.
    for loss in ("ga", "npo", "po"):
        alone, both = weights[loss], weights[f"{loss}_retain"]
        assert any(not torch.equal(alone[n], both[n]) for n in original), loss
        assert sum(not torch.equal(alone[n], original[n]) for n in original) > 0.9 * len(original)
