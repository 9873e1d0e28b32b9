"""Node -> weight-slice mapping, masks, ratio, counts and mask files."""

from __future__ import annotations

from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import torch

from clue_mi import masks as M

TEXT = "When Mary and John went to the store, John gave a drink to"


@contextmanager
def perturbed(model, node: str, seed: int = 0):
    """Add noise to exactly the elements ``node`` owns; restore them afterwards."""
    mask = M.mask_from_nodes(model, [node])
    saved = {n: M.get_parameter(model, n).detach().clone() for n in mask}
    gen = torch.Generator().manual_seed(seed)
    try:
        with torch.no_grad():
            for name, m in mask.items():
                p = M.get_parameter(model, name)
                p.add_(torch.randn(p.shape, generator=gen) * m)
        yield
    finally:
        with torch.no_grad():
            for name, value in saved.items():
                M.get_parameter(model, name).copy_(value)


def run(model):
    toks = model.tokenizer([TEXT], return_tensors="pt").input_ids
    _, cache = model.run_with_cache(toks)
    return cache


def changed_heads(a, b, name: str, head_dim: int = 2) -> list[int]:
    """Indices along the head axis where the cached activations differ."""
    x, y = a[name], b[name]
    return [
        i
        for i in range(x.shape[head_dim])
        if not torch.equal(x.select(head_dim, i), y.select(head_dim, i))
    ]


@pytest.fixture(scope="module")
def base(tiny):
    return run(tiny)


def test_q_node_changes_only_its_head(tiny, base):
    with perturbed(tiny, "a0.h1.q"):
        after = run(tiny)
    assert changed_heads(base, after, "blocks.0.attn.hook_q") == [1]
    assert changed_heads(base, after, "blocks.0.attn.hook_pattern", head_dim=1) == [1]
    assert changed_heads(base, after, "blocks.0.attn.hook_result") == [1]
    for hook in ("blocks.0.attn.hook_k", "blocks.0.attn.hook_v"):
        assert torch.equal(base[hook], after[hook])


@pytest.mark.parametrize("which", ["k", "v"])
def test_kv_node_changes_only_its_group(tiny, base, which):
    other = "v" if which == "k" else "k"
    with perturbed(tiny, f"a1.g1.{which}"):
        after = run(tiny)
    assert changed_heads(base, after, f"blocks.1.attn.hook_{which}") == [1]
    assert torch.equal(base[f"blocks.1.attn.hook_{other}"], after[f"blocks.1.attn.hook_{other}"])
    assert torch.equal(base["blocks.1.attn.hook_q"], after["blocks.1.attn.hook_q"])
    # 4 heads / 2 KV groups: group 1 serves heads 2 and 3.
    assert changed_heads(base, after, "blocks.1.attn.hook_result") == [2, 3]
    assert torch.equal(base["blocks.0.hook_resid_post"], after["blocks.0.hook_resid_post"])


def test_o_node_changes_only_its_head_result(tiny, base):
    with perturbed(tiny, "a0.h2"):
        after = run(tiny)
    assert changed_heads(base, after, "blocks.0.attn.hook_result") == [2]
    for hook in ("hook_q", "hook_k", "hook_v", "hook_pattern", "hook_z"):
        assert torch.equal(base[f"blocks.0.attn.{hook}"], after[f"blocks.0.attn.{hook}"])


def test_mlp_node_changes_only_the_mlp(tiny, base):
    with perturbed(tiny, "m0"):
        after = run(tiny)
    assert not torch.equal(base["blocks.0.hook_mlp_out"], after["blocks.0.hook_mlp_out"])
    assert torch.equal(base["blocks.0.hook_attn_out"], after["blocks.0.hook_attn_out"])
    assert torch.equal(base["blocks.0.hook_mlp_in"], after["blocks.0.hook_mlp_in"])


def test_perturbation_is_restored(tiny, base):
    with perturbed(tiny, "m1"):
        pass
    assert torch.equal(run(tiny)["blocks.1.hook_mlp_out"], base["blocks.1.hook_mlp_out"])


def test_llama_slices(tiny):
    dh = 16
    (q,) = M.node_slices(tiny, "a1.h3.q")
    assert (q.param, q.dim, q.start, q.stop) == (
        "model.layers.1.self_attn.q_proj.weight",
        0,
        3 * dh,
        4 * dh,
    )
    (o,) = M.node_slices(tiny, "a1.h3")
    assert (o.param, o.dim, o.start, o.stop) == (
        "model.layers.1.self_attn.o_proj.weight",
        1,
        3 * dh,
        4 * dh,
    )
    (v,) = M.node_slices(tiny, "a0.g1.v")
    assert (v.param, v.dim, v.start, v.stop) == (
        "model.layers.0.self_attn.v_proj.weight",
        0,
        dh,
        2 * dh,
    )
    assert {s.param.split(".")[-2] for s in M.node_slices(tiny, "m0")} == {
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    assert M.node_slices(tiny, "input") == [] and M.node_slices(tiny, "logits") == []


@pytest.mark.parametrize("bad", ["a9.h0.q", "a0.h4", "a0.g2.k", "m2", "b0", "a0.h1.z"])
def test_bad_node_names_raise(tiny, bad):
    with pytest.raises(ValueError):
        M.node_slices(tiny, bad)


def test_unsupported_architecture_is_named():
    from transformers import GPTNeoXConfig

    fake = SimpleNamespace(config=GPTNeoXConfig(architectures=["GPTNeoXForCausalLM"]))
    with pytest.raises(M.UnsupportedArchitectureError, match="GPTNeoXForCausalLM"):
        M.node_slices(fake, "m0")


# ----------------------------------------------------------------------------- GPT-2


@pytest.fixture(scope="module")
def gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_head=4, n_embd=32, vocab_size=100, n_positions=32)
    cfg.bos_token_id = cfg.eos_token_id = 0
    return GPT2LMHeadModel(cfg).eval()


def test_gpt2_fused_qkv_columns(gpt2):
    attn = gpt2.transformer.h[1].attn
    d, dh = 32, 8
    x = torch.randn(3, 5, d)
    for node, cols in [
        ("a1.h2.q", range(2 * dh, 3 * dh)),
        ("a1.g1.k", range(d + dh, d + 2 * dh)),
        ("a1.g3.v", range(2 * d + 3 * dh, 2 * d + 4 * dh)),
    ]:
        before = attn.c_attn(x)
        with perturbed(gpt2, node):
            after = attn.c_attn(x)
        diff = (before != after).any(0).any(0)
        assert diff.nonzero().flatten().tolist() == list(cols), node
        names = {s.param for s in M.node_slices(gpt2, node)}
        assert names == {"transformer.h.1.attn.c_attn.weight", "transformer.h.1.attn.c_attn.bias"}


def test_gpt2_head_output_rows(gpt2):
    proj = gpt2.transformer.h[0].attn.c_proj
    (sl,) = M.node_slices(gpt2, "a0.h1")
    assert (sl.param, sl.dim, sl.start, sl.stop) == ("transformer.h.0.attn.c_proj.weight", 0, 8, 16)
    z = torch.randn(2, 4, 32)
    own, others = z.clone(), z.clone()
    own[..., :8] = own[..., 16:] = 0  # only head 1's values
    others[..., 8:16] = 0  # every head but 1
    before_own, before_others = proj(own), proj(others)
    with perturbed(gpt2, "a0.h1"):
        assert not torch.equal(proj(own), before_own)
        assert torch.equal(proj(others), before_others)


def test_gpt2_mlp_and_ratio(gpt2):
    names = {s.param for s in M.node_slices(gpt2, "m0")}
    assert names == {
        f"transformer.h.0.mlp.{p}.{w}" for p in ("c_fc", "c_proj") for w in ("weight", "bias")
    }
    mask = M.mask_from_nodes(gpt2, ["m0", "a0.h0.q"])
    # 2 layers x (q, k, v, o, up, down) = 12 matrices: up, down full, q a quarter.
    assert M.unlearned_ratio(gpt2, mask) == pytest.approx((1 + 1 + 0.25) / 12)
    assert "gate" not in M.mask_counts(gpt2, mask)


# ----------------------------------------------------------------------------- masks


def test_ratio_and_counts_by_hand(tiny):
    forget = M.forget_mask(tiny, ["a0.h1.q", "a1.g1.v", "m1"])
    conflict = M.conflict_mask(tiny, ["a0.h3", "input", "logits"])
    # 14 matrices (2 layers x q,k,v,o,gate,up,down); q0: 16/64 rows, v1: 16/32 rows,
    # o0: 16/64 columns, gate1, up1, down1: whole.
    expected = (0.25 + 0.5 + 0.25 + 3) / 14
    assert M.unlearned_ratio(tiny, forget, conflict) == pytest.approx(expected)
    assert M.unlearned_ratio(tiny, forget, forget, conflict) == pytest.approx(expected)
    counts = M.mask_counts(tiny, forget, conflict)
    assert counts["q"] == [16 * 64, 0] and counts["v"] == [0, 16 * 64]
    assert counts["o"] == [64 * 16, 0] and counts["gate"] == [0, 256 * 64]
    assert M.matrix_sizes(tiny)["k"] == [32 * 64, 32 * 64]
    assert M.mask_size(M.union(forget, conflict)) == 3 * 1024 + 3 * 256 * 64


def test_masks_from_localization(tiny):
    loc = SimpleNamespace(forget={"a0.h0.q"}, conflict={"m1"}, retain=set(), safe=set())
    forget, conflict = M.masks_from_localization(tiny, loc)
    assert list(forget) == ["model.layers.0.self_attn.q_proj.weight"]
    assert M.mask_size(conflict) == 3 * 256 * 64
    assert M.overlap(forget, conflict) == 0


def test_save_load_roundtrip(tiny, tmp_path):
    forget = M.forget_mask(tiny, ["a0.h1.q", "m0"])
    conflict = M.conflict_mask(tiny, ["a1.h0"])
    path = M.save_masks(tmp_path / "masks.safetensors", {"forget": forget, "conflict": conflict})
    loaded = M.load_masks(path, model=tiny)
    assert set(loaded) == {"forget", "conflict"}
    for name, m in forget.items():
        assert torch.equal(loaded["forget"][name], m)
    with pytest.raises(FileExistsError):
        M.save_masks(path, {"forget": forget})
    M.save_masks(path, {"forget": {}}, overwrite=True)
    assert M.load_masks(path) == {"forget": {}}
    assert [p.name for p in tmp_path.iterdir()] == ["masks.safetensors"]  # no temp files left


def test_load_rejects_foreign_mask(tiny, tmp_path):
    path = M.save_masks(
        tmp_path / "m.safetensors", {"f": {"model.norm.weight": torch.ones(3, dtype=torch.bool)}}
    )
    with pytest.raises(ValueError, match="does not fit"):
        M.load_masks(path, model=tiny)


def test_category_shares_count_each_kind_of_weight(tiny):
    loc = SimpleNamespace(forget={"a0.h1.q"}, conflict={"m1"}, retain={"a1.h0"})
    shares = M.category_shares(tiny, loc)
    # One query head of 4 in one layer of 2: 1/8 of all q weights; its matrix is 1/4 masked.
    assert shares["forget"]["q"] == pytest.approx(1 / 8)
    assert shares["forget"]["all"] == pytest.approx((1 / 4) / 14)  # 7 matrices x 2 layers
    assert {k for k, v in shares["forget"].items() if v} == {"q", "all"}
    # One MLP of 2: half of every MLP matrix kind, nothing of attention.
    assert [shares["conflict"][k] for k in ("gate", "up", "down")] == [0.5, 0.5, 0.5]
    assert shares["conflict"]["q"] == shares["conflict"]["o"] == 0
    assert shares["retain"]["o"] == pytest.approx(1 / 8)  # a head's 16 columns of o_proj
