"""Circuit cache: hits, misses, atomic writes, and never trusting a damaged file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from clue_mi import attribution, tasks
from clue_mi.cache import (
    CacheWarning,
    cache_dir,
    cache_path,
    circuit_summary,
    discover,
    model_fingerprint,
)
from clue_mi.models import weights_fingerprint

ARGS = {"direction": "noising", "method": "eap", "sparsity": 0.9, "batch_size": 8}


@pytest.fixture(scope="module")
def task(tiny):
    return tasks.get("ioi", tiny, n=8, n_eval=8, seed=0)


@pytest.fixture
def calls(monkeypatch):
    """Count the attributions that really run (EAP computes both directions in one call)."""
    counter = {"n": 0}
    for name in ("attribute", "attribute_both"):
        real = getattr(attribution, name)

        def counting(*args, _real=real, **kwargs):
            counter["n"] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(attribution, name, counting)
    return counter


def _forbid_attribution(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the cache should have answered")

    monkeypatch.setattr(attribution, "attribute", fail)
    monkeypatch.setattr(attribution, "attribute_both", fail)


def test_cache_location_follows_the_environment(tiny, task, tmp_path):
    assert cache_dir() == Path(os.environ["CLUE_MI_CACHE"])
    path = cache_path(tiny, task, "noising", "eap", 0.9)
    assert path.parent == cache_dir() and path.name.startswith("ioi-noising-eap-")
    assert cache_path(tiny, task, "noising", "eap", 0.9, directory=tmp_path).parent == tmp_path


def test_second_call_hits_the_cache(tiny, task, calls, monkeypatch):
    first = discover(tiny, task, **ARGS)
    assert calls["n"] == 1 and first.graph["cache_hit"] is False
    path = cache_path(tiny, task, "noising", "eap", 0.9)
    assert path.is_file() and not list(path.parent.glob("*.tmp"))
    _forbid_attribution(monkeypatch)
    second = discover(tiny, task, **ARGS)
    assert second.graph["cache_hit"] is True
    assert set(second.edges) == set(first.edges)
    for u, v, data in first.edges(data=True):
        assert second.edges[u, v]["score"] == data["score"]
    assert second.graph["faithfulness"] == first.graph["faithfulness"]


def test_different_parameters_miss(tiny, task, calls):
    discover(tiny, task, **ARGS)
    discover(tiny, task, **{**ARGS, "sparsity": 0.8})
    discover(tiny, task, **{**ARGS, "direction": "denoising"})
    other = tasks.get("ioi", tiny, n=8, n_eval=8, seed=1)
    discover(tiny, other, **ARGS)
    # four circuits, but the scores of the first prompts (both directions) are computed once
    assert calls["n"] == 2
    assert len(list(cache_dir().glob("*.json"))) == 4
    # the same key function also separates methods, EAP-IG steps and top_n
    paths = {
        cache_path(tiny, task, "noising", "eap", 0.9),
        cache_path(tiny, task, "noising", "eap-ig", 0.9, steps=2),
        cache_path(tiny, task, "noising", "eap-ig", 0.9, steps=3),
        cache_path(tiny, task, "noising", "eap", 0.9, top_n=10),
    }
    assert len(paths) == 4
    # steps mean nothing to EAP: they do not split its entries
    assert cache_path(tiny, task, "noising", "eap", 0.9, steps=9) in paths


def test_truncated_file_is_recomputed(tiny, task, calls):
    discover(tiny, task, **ARGS)
    path = cache_path(tiny, task, "noising", "eap", 0.9)
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    with pytest.warns(CacheWarning, match="invalid"):
        circuit = discover(tiny, task, **ARGS)
    # the circuit is rebuilt from the (intact) cached scores: no new attribution
    assert calls["n"] == 1 and circuit.graph["cache_hit"] is False
    assert path.read_text() == text  # overwritten with a valid entry again
    discover(tiny, task, **ARGS)
    assert calls["n"] == 1


def test_edited_file_with_valid_json_is_detected(tiny, task, calls):
    honest = discover(tiny, task, **ARGS)
    path = cache_path(tiny, task, "noising", "eap", 0.9)
    doc = json.loads(path.read_text())
    edge = doc["payload"]["circuit"]["edges"][0]
    edge["score"] = edge["score"] * 10  # tamper, keep the old checksum
    path.write_text(json.dumps(doc))
    with pytest.warns(CacheWarning, match="checksum"):
        again = discover(tiny, task, **ARGS)
    assert calls["n"] == 1  # rebuilt from the cached scores
    assert (
        again.edges[edge["source"], edge["target"]]["score"]
        == (honest.edges[edge["source"], edge["target"]]["score"])
    )


def test_changed_weights_change_the_key(tiny, task):
    before = cache_path(tiny, task, "noising", "eap", 0.9)
    assert model_fingerprint(tiny) == weights_fingerprint(tiny)
    param = next(tiny.original_model.parameters())
    saved = param.detach().clone()
    with torch.no_grad():
        param.add_(1.0)  # in place: the memoized fingerprint must notice
    try:
        assert model_fingerprint(tiny) == weights_fingerprint(tiny)
        assert cache_path(tiny, task, "noising", "eap", 0.9) != before
    finally:
        with torch.no_grad():
            param.copy_(saved)
    assert cache_path(tiny, task, "noising", "eap", 0.9) == before


def test_summary_mentions_size_and_faithfulness(tiny, task):
    text = circuit_summary(discover(tiny, task, **ARGS))
    assert "edges:" in text and "sparsity" in text and "KL" in text and "recovery" in text
    assert "task=ioi" in text and "direction=noising" in text


def test_discover_after_a_masked_step_recomputes(tiny, task):
    """discover -> one MaskedAdamW step on the MLP weights -> discover must not hit (#16)."""
    from clue_mi import masks
    from clue_mi.unlearn import MaskedAdamW

    first = discover(tiny, task, **ARGS)
    mask = masks.mask_from_nodes(tiny, ["m0", "m1"])
    params = {n: masks.get_parameter(tiny, n) for n in mask}
    saved = {n: p.detach().clone() for n, p in params.items()}
    opt = MaskedAdamW([(params[n], m) for n, m in mask.items()], lr=0.05)
    for p in params.values():
        p.grad = torch.randn_like(p)
    opt.step()
    opt.zero_grad()
    try:
        assert model_fingerprint(tiny) == weights_fingerprint(tiny)
        again = discover(tiny, task, **ARGS)
        assert again.graph["cache_hit"] is False
        scores = lambda c: {(u, v): s for u, v, s in c.edges(data="score")}  # noqa: E731
        assert scores(again) != scores(first)
    finally:
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(saved[n])
    assert discover(tiny, task, **ARGS).graph["cache_hit"] is True


def test_a_data_write_that_skips_the_version_is_still_seen(tiny, task):
    """``param.data[...] = x`` does not move ``_version``; the fingerprint must notice anyway."""
    before = model_fingerprint(tiny)
    from clue_mi.masks import get_parameter

    param = get_parameter(tiny, "model.layers.0.mlp.up_proj.weight")
    saved, version = param.detach().clone(), param._version
    param.data[0, 0] += 1.0
    assert param._version == version  # the write torch does not count
    try:
        assert model_fingerprint(tiny) != before
        assert model_fingerprint(tiny) == weights_fingerprint(tiny)
    finally:
        param.data.copy_(saved)
    assert model_fingerprint(tiny) == before


def test_restore_and_export_keep_the_fingerprint_honest(tiny, task, tmp_path):
    """Every path that writes (or only reads) weights: restore moves back, export moves nothing."""
    from clue_mi.experiment import WeightSnapshot
    from clue_mi.masks import get_parameter
    from clue_mi.unlearn import MaskedAdamW, export_hf

    snapshot = WeightSnapshot(tiny)
    before = model_fingerprint(tiny)
    param = get_parameter(tiny, "model.layers.1.mlp.down_proj.weight")
    opt = MaskedAdamW([(param, torch.ones_like(param, dtype=torch.bool))], lr=0.1)
    param.grad = torch.ones_like(param)
    opt.step()
    opt.zero_grad()
    try:
        assert model_fingerprint(tiny) != before
    finally:
        snapshot.restore()
    assert model_fingerprint(tiny) == before == weights_fingerprint(tiny)
    export_hf(tiny, tmp_path / "model", tokenizer=tiny.tokenizer)
    assert model_fingerprint(tiny) == before


def test_pinned_fingerprint_checks_content_once_and_still_sees_torch_writes(tiny, monkeypatch):
    from clue_mi import cache
    from clue_mi.masks import get_parameter

    cache._FINGERPRINTS.pop(tiny, None)
    checked = []
    real = cache._checksum
    monkeypatch.setattr(cache, "_checksum", lambda p: checked.append(1) or real(p))
    n_params = len(list(tiny.original_model.parameters()))
    param = get_parameter(tiny, "model.layers.0.mlp.up_proj.weight")
    saved = param.detach().clone()
    before = model_fingerprint(tiny)
    with cache.pinned_fingerprint(tiny) as pinned:
        checked.clear()
        assert pinned == before
        for _ in range(5):
            assert model_fingerprint(tiny) == before
        assert checked == []  # no content pass while pinned
        with cache.pinned_fingerprint(tiny):  # nests
            assert model_fingerprint(tiny) == before
        with torch.no_grad():
            param.add_(1.0)  # a torch write moves _version: seen inside the block
        try:
            assert model_fingerprint(tiny) == weights_fingerprint(tiny) != before
        finally:
            with torch.no_grad():
                param.copy_(saved)  # bit for bit (x + 1 - 1 is not x in float32)
    assert len(checked) >= n_params  # the write forced a full check
    assert not cache._PINNED  # released
    # Outside a pin, a write behind autograd's back is caught by the content check.
    old = param.data[0, 0].item()
    param.data[0, 0] = old + 1.0
    try:
        assert model_fingerprint(tiny) == weights_fingerprint(tiny)
    finally:
        param.data[0, 0] = old
    assert model_fingerprint(tiny) == weights_fingerprint(tiny) == before  # restored exactly
