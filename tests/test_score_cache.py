"""Score cache: one attribution per (task, direction) whatever is selected from it, shared
noising/denoising passes with unchanged scores, verified files, a lock, and faster circuit runs
that compute the same thing."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from filelock import FileLock

from clue_mi import attribution, tasks
from clue_mi.attribution import attribute, attribute_both, faithfulness
from clue_mi.cache import CacheWarning, discover
from clue_mi.graph import graph_for, select_circuit
from clue_mi.score_cache import _folder, attribution_scores, score_key, score_path

SPARSITIES = (0.2, 0.5, 0.8, 0.9, 0.95)


@pytest.fixture(scope="module")
def task(tiny):
    return tasks.get("ioi", tiny, n=8, n_eval=6, seed=0)


@pytest.fixture
def calls(monkeypatch):
    """Attributions that really run, as (function, direction or None for both)."""
    log: list[tuple[str, str | None]] = []
    real_one, real_both = attribution.attribute, attribution.attribute_both

    def one(model, prompts, direction="noising", *args, **kwargs):
        log.append(("attribute", direction))
        return real_one(model, prompts, direction, *args, **kwargs)

    def both(*args, **kwargs):
        log.append(("attribute_both", None))
        return real_both(*args, **kwargs)

    monkeypatch.setattr(attribution, "attribute", one)
    monkeypatch.setattr(attribution, "attribute_both", both)
    return log


@pytest.mark.parametrize("method, steps", [("eap", 1), ("eap-ig", 3)])
def test_shared_passes_give_the_same_scores(tiny, task, method, steps):
    # Noising's corrupted run and denoising's clean run are each other's start runs; sharing
    # them must not change a single bit of either direction's scores.
    both = attribute_both(tiny, task, method, steps=steps, batch_size=4)
    for direction in ("noising", "denoising"):
        alone = attribute(tiny, task, direction, method, steps=steps, batch_size=4)
        assert torch.equal(both[direction], alone), direction


def test_sparsity_sweep_costs_one_attribution_per_task_and_direction(tiny, task, calls):
    circuits = [
        discover(tiny, task, direction, "eap", sparsity=s, batch_size=8)
        for s in SPARSITIES
        for direction in ("noising", "denoising")
    ]
    # One joint call computes both directions' scores (one attribution per direction); the
    # other nine circuits are selected from the cached scores.
    assert calls == [("attribute_both", None)]
    sizes = [c.number_of_edges() for c in circuits[::2]]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > sizes[-1]
    assert all(c.graph["faithfulness"] is not None for c in circuits)


def test_exact_attributes_only_the_requested_direction(tiny, calls):
    small = tasks.get("ioi", tiny, n=2, n_eval=2, seed=0)
    attribution_scores(tiny, small, "denoising", "exact", batch_size=2)
    assert calls == [("attribute", "denoising")]
    assert not score_path(tiny, small, "noising", "exact").exists()


def test_cached_scores_are_the_attribution(tiny, task, calls):
    first = attribution_scores(tiny, task, "noising", "eap", batch_size=8)
    again = attribution_scores(tiny, task, "noising", "eap", batch_size=8)
    other = attribution_scores(tiny, task, "denoising", "eap", batch_size=8)
    assert len(calls) == 1
    assert torch.equal(first, again) and first.dtype == torch.float64
    assert torch.equal(first, attribute(tiny, task, "noising", "eap", batch_size=8))
    assert torch.equal(other, attribute(tiny, task, "denoising", "eap", batch_size=8))
    assert not list(_folder(None).glob("*.tmp"))


def test_key_covers_weights_prompts_direction_method_steps(tiny, task):
    keys = {
        score_key(tiny, task, "noising", "eap"),
        score_key(tiny, task, "denoising", "eap"),
        score_key(tiny, task, "noising", "eap-ig", steps=2),
        score_key(tiny, task, "noising", "eap-ig", steps=3),
        score_key(tiny, tasks.get("ioi", tiny, n=8, n_eval=6, seed=1), "noising", "eap"),
    }
    assert len(keys) == 5
    assert score_key(tiny, task, "noising", "eap", steps=9) in keys  # steps mean nothing to EAP
    # the eval split is not attributed, so it is not part of the key
    assert score_key(tiny, tasks.get("ioi", tiny, n=8, n_eval=2, seed=0), "noising", "eap") in keys


def test_changed_weights_recompute_and_restored_weights_reuse(tiny, task, calls):
    before = attribution_scores(tiny, task, "noising", "eap", batch_size=8)
    param = tiny.original_model.model.layers[1].mlp.down_proj.weight
    saved = param.detach().clone()
    with torch.no_grad():
        param.mul_(1.5)
    try:
        after = attribution_scores(tiny, task, "noising", "eap", batch_size=8)
        assert len(calls) == 2 and not torch.equal(before, after)
    finally:
        with torch.no_grad():
            param.copy_(saved)
    assert torch.equal(attribution_scores(tiny, task, "noising", "eap", batch_size=8), before)
    assert len(calls) == 2


@pytest.mark.parametrize("damage", ["truncate", "tamper"])
def test_damaged_file_is_recomputed(tiny, task, calls, damage):
    honest = attribution_scores(tiny, task, "noising", "eap", batch_size=8)
    path = score_path(tiny, task, "noising", "eap")
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[-3] ^= 0x40  # flip a bit of the last score, keep the stored checksum
    path.write_bytes(bytes(data))
    with pytest.warns(CacheWarning, match="truncate|checksum|invalid"):
        again = attribution_scores(tiny, task, "noising", "eap", batch_size=8)
    assert len(calls) == 2 and torch.equal(again, honest)
    attribution_scores(tiny, task, "noising", "eap", batch_size=8)
    assert len(calls) == 2  # the rewritten file is trusted again


def test_a_second_process_waits_for_the_first(tiny, task, calls, tmp_path):
    # Another process holds the lock and is computing; we must wait, then read its entry.
    ref_dir = tmp_path / "elsewhere"
    ref = attribution_scores(tiny, task, "noising", "eap", batch_size=8, directory=ref_dir)
    assert len(calls) == 1
    lock_path = next((ref_dir / "scores").glob("*.lock"))
    folder = _folder(None)
    folder.mkdir(parents=True, exist_ok=True)
    other = FileLock(str(folder / lock_path.name), thread_local=False)
    result: dict[str, torch.Tensor] = {}
    with other:
        worker = threading.Thread(
            target=lambda: result.update(
                s=attribution_scores(tiny, task, "noising", "eap", batch_size=8)
            )
        )
        worker.start()
        time.sleep(0.5)
        assert worker.is_alive()  # blocked on the lock
        for src in (ref_dir / "scores").glob("*.safetensors"):  # "the other process" stores
            (folder / src.name).write_bytes(src.read_bytes())
    worker.join(timeout=60)
    assert torch.equal(result["s"], ref)
    assert len(calls) == 1  # nothing was computed twice


def _naive_circuit_logits(model, prompts, circuit):
    """The circuit run as first written: every hooked receiver gets ``act + Σ_excluded delta``."""
    graph = graph_for(model)
    keep = graph.edge_mask(circuit)
    excluded = graph.adjacency.clone()
    ext = ~graph.internal & keep
    excluded[graph.edge_sender[ext], graph.edge_receiver[ext]] = False
    internal_kept = torch.zeros(graph.n_receivers, dtype=torch.bool)
    internal_kept[graph.edge_receiver[graph.internal & keep]] = True
    corrupt = torch.zeros(graph.n_receivers, dtype=torch.bool)
    corrupt[graph.edge_receiver[graph.internal]] = True
    corrupt &= ~internal_kept
    s_cor, r_cor, _, _ = attribution._cache_run(model, graph, prompts.corrupted_tokens)
    s_cur = torch.zeros_like(s_cor)

    def on_sender(slot, act):
        s_cur[:, :, slot.start : slot.stop] = act

    def on_receiver(slot, act):
        a, z = slot.start, slot.stop
        new = act + torch.einsum("bpsd,sn->bpnd", s_cor - s_cur, excluded[:, a:z].float())
        return torch.where(corrupt[a:z][None, None, :, None], r_cor[:, :, a:z], new)

    with torch.no_grad():
        return attribution._forward(model, graph, prompts.clean_tokens, on_sender, on_receiver)


@pytest.mark.parametrize("sparsity", [0.3, 0.7, 0.95])
def test_fast_circuit_run_matches_the_naive_one(tiny, task, sparsity):
    graph = graph_for(tiny)
    scores = attribute(tiny, task, "noising", "eap", batch_size=8)
    circuit = select_circuit(graph, scores, sparsity=sparsity)
    fast = attribution.circuit_run(tiny, task.eval, circuit, batch_size=16)
    naive = _naive_circuit_logits(tiny, task.eval, circuit)
    # Same sums, fewer (and reordered) terms: equal up to float32 rounding.
    torch.testing.assert_close(fast, naive, atol=2e-5, rtol=1e-5)


def test_faithfulness_shares_the_clean_and_corrupted_runs(tiny, task, monkeypatch):
    graph = graph_for(tiny)
    scores = attribute(tiny, task, "noising", "eap", batch_size=8)
    circuits = [select_circuit(graph, scores, sparsity=s) for s in (0.5, 0.9)]
    attribution._REFERENCE.clear()
    runs = {"n": 0}
    real = attribution._cache_run

    def counting(*args, **kwargs):
        runs["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(attribution, "_cache_run", counting)
    results = [faithfulness(tiny, task.eval, c, batch_size=4) for c in circuits]
    assert runs["n"] == 2  # the corrupted run of each of the 2 batches, once for both circuits
    for c, r in zip(circuits, results, strict=True):
        logits = _naive_circuit_logits(tiny, task.eval, c)[:, -1]
        with torch.no_grad():
            clean = tiny(task.eval.clean_tokens)[:, -1]
        kl = float(attribution._kl(clean, logits).mean())
        assert r["kl"] == pytest.approx(kl, rel=1e-4, abs=1e-7)
    assert results[0]["kl_empty"] == results[1]["kl_empty"]


def test_unmeasured_circuits_localize_the_same(tiny, calls):
    from clue_mi.pipeline import PipelineConfig, load_tasks, localize_tasks, logical_circuits

    config = PipelineConfig(retain=("gender",), n=6, n_eval=4, sparsity=0.5, batch_size=8)
    data = load_tasks(tiny, config)
    measured = logical_circuits(tiny, data, config, progress=False)
    unmeasured = logical_circuits(tiny, data, config, progress=False, faithfulness=False)
    assert len(calls) == 2  # one joint attribution per task, reused by the second call
    for name in measured:
        a, b = measured[name], unmeasured[name]
        assert sorted(a.edges(data="gate")) == sorted(b.edges(data="gate")), name
    before = localize_tasks(tiny, measured, config)
    after = localize_tasks(tiny, unmeasured, config)
    assert (before.forget, before.conflict, before.retain) == (
        after.forget,
        after.conflict,
        after.retain,
    )
