"""The decoder: causality, KV cache, padding, attention weights, parameter counts, config validation, the
optimiser's parameter groups."""

from __future__ import annotations

import pytest
import torch

from goushi import lora
from goushi.config import ConfigError, ModelConfig, param_counts, preset_config
from goushi.model import GPT, check_param_groups

FAMILIES = ("gpt2", "llama")


def small(family: str, **kw) -> GPT:
    torch.manual_seed(0)
    cfg = preset_config("tiny", family, vocab_size=61, n_layer=2, n_head=4, n_embd=32, context_length=24, **kw)
    return GPT(cfg).eval()


@pytest.mark.parametrize("family", FAMILIES)
def test_changing_later_tokens_leaves_earlier_logits_unchanged(family):
    model = small(family)
    idx = torch.randint(0, 61, (2, 20), generator=torch.Generator().manual_seed(1))
    t = 9
    changed = idx.clone()
    changed[:, t + 1:] = (changed[:, t + 1:] + 7) % 61
    with torch.no_grad():
        a, _ = model(idx)
        b, _ = model(changed)
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1])
    assert not torch.allclose(a[:, t + 1:], b[:, t + 1:])  # the change is seen where it should be


@pytest.mark.parametrize("family,kv", [("gpt2", 0), ("llama", 2), ("llama", 1)])
def test_kv_cache_decoding_equals_full_forward(family, kv):
    model = small(family, n_kv_head=kv)
    assert model.config.kv_heads == (kv or 4)
    idx = torch.randint(0, 61, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full, _ = model(idx)
        cache = model.new_kv_cache(2, 16)
        pre, _ = model(idx[:, :7], kv_cache=cache, pos=0)
        steps = [pre]
        for p in range(7, 16):
            out, _ = model(idx[:, p: p + 1], kv_cache=cache, pos=p)
            steps.append(out)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-4)
    assert cache.length == 16


@pytest.mark.parametrize("family", FAMILIES)
def test_left_padded_batch_equals_unpadded(family):
    model = small(family)
    g = torch.Generator().manual_seed(3)
    long, short = torch.randint(1, 61, (10,), generator=g), torch.randint(1, 61, (6,), generator=g)
    pad = 10 - 6
    idx = torch.stack([long, torch.cat([torch.zeros(pad, dtype=torch.long), short])])
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, :pad] = False
    pos_ids = torch.stack([torch.arange(10), torch.cat([torch.zeros(pad, dtype=torch.long), torch.arange(6)])])
    with torch.no_grad():
        batched, _ = model(idx, position_ids=pos_ids, key_padding_mask=mask)
        alone_long, _ = model(long[None])
        alone_short, _ = model(short[None])
    torch.testing.assert_close(batched[0], alone_long[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(batched[1, pad:], alone_short[0], atol=1e-5, rtol=1e-4)



@pytest.mark.parametrize("family", FAMILIES)
def test_packed_documents_under_doc_sep_are_each_computed_alone(family):
    model = small(family)
    g = torch.Generator().manual_seed(4)
    a, b, c = (torch.randint(1, 61, (n,), generator=g) for n in (5, 7, 6))
    sep = torch.zeros(1, dtype=torch.long)
    # a row as training windows hold them: the tail of one document, then <|endoftext|> before each next one
    row = torch.cat([a, sep, b, sep, c])[None]
    with torch.no_grad():
        packed, _ = model(row, doc_sep=0)
        alone = torch.cat([model(part[None])[0] for part in (a, torch.cat([sep, b]), torch.cat([sep, c]))], dim=1)
        plain, _ = model(row)
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(plain[:, 5:], alone[:, 5:], atol=1e-3)  # without it the later documents look back
    y = torch.randint(0, 61, row.shape, generator=g)
    with torch.no_grad():
        _, loss = model(row, y, doc_sep=0)
    ref = torch.nn.functional.cross_entropy(alone[0], y[0])
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="doc_sep"):
        model(row, doc_sep=0, pos=1)

def test_no_attn_dropout_keeps_dropout_on_the_residual_branches_only(monkeypatch):
    seen: list[float] = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(*a, dropout_p=0.0, **k):
        seen.append(dropout_p)
        return sdpa(*a, dropout_p=dropout_p, **k)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    x = torch.randint(0, 61, (2, 12), generator=torch.Generator().manual_seed(0))
    for attn, want in ((True, 0.5), (False, 0.0)):
        cfg = preset_config("tiny", "llama", vocab_size=61, n_layer=2, n_head=2, n_embd=16, context_length=16,
                            dropout=0.5, attn_dropout=attn)
        model = GPT(cfg).train()
        seen.clear()
        a, b = model(x)[0], model(x)[0]
        assert seen and set(seen) == {want}
        assert not torch.allclose(a, b)  # the residual branches still drop
        seen.clear()
        model.eval()
        with torch.no_grad():
            assert torch.equal(model(x)[0], model(x)[0]) and set(seen) == {0.0}


@pytest.mark.parametrize("family", FAMILIES)
def test_attention_weights_are_causal_distributions_and_match_fast_path(family):
    model = small(family)
    idx = torch.randint(0, 61, (1, 12), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        logits, weights = model.forward_with_attention(idx)
        fast, _ = model(idx)
    assert len(weights) == model.config.n_layer
    for w in weights:
        assert w.shape == (1, 4, 12, 12)
        torch.testing.assert_close(w.sum(-1), torch.ones(1, 4, 12))
        assert torch.all(torch.triu(w[0], diagonal=1) == 0)  # nothing flows from the future
    torch.testing.assert_close(logits, fast, atol=1e-5, rtol=1e-4)


def _actual_params(cfg: ModelConfig) -> int:
    with torch.device("meta"):
        return GPT(cfg).num_params()


@pytest.mark.parametrize("preset", ["tiny", "small", "base"])
@pytest.mark.parametrize("family", FAMILIES)
def test_param_counts_match_built_model(preset, family):
    cfg = preset_config(preset, family, vocab_size=3000)
    assert param_counts(cfg)["total"] == _actual_params(cfg)


@pytest.mark.parametrize("overrides", [
    dict(tie_embeddings=False), dict(qk_norm=True), dict(bias=False), dict(mlp="relu2"), dict(mlp="swiglu", bias=False),
    dict(mlp="swiglu"),
    dict(pos_encoding="sinusoidal"), dict(norm="rmsnorm", bias=True), dict(mlp_hidden=100),
])
def test_param_counts_match_for_variants(overrides):
    cfg = preset_config("tiny", "gpt2", vocab_size=500, **overrides)
    counts = param_counts(cfg)
    assert counts["total"] == _actual_params(cfg)
    assert counts["embedding"] == 500 * 128 * (1 if cfg.tie_embeddings else 2)


@pytest.mark.parametrize("overrides,field", [
    (dict(n_embd=130), "n_embd"),
    (dict(n_kv_head=3), "n_kv_head"),
    (dict(pos_encoding="alibi"), "pos_encoding"),
    (dict(norm="batchnorm"), "norm"),
    (dict(mlp="tanh"), "mlp"),
    (dict(dropout=1.5), "dropout"),
    (dict(n_layer=0), "n_layer"),
])
def test_impossible_config_is_refused_naming_the_field(overrides, field):
    with pytest.raises(ConfigError, match=field):
        preset_config("tiny", "gpt2", vocab_size=100, **overrides)


def test_sequence_longer_than_position_table_is_refused():
    model = small("gpt2")
    with pytest.raises(ValueError, match="context_length"):
        model(torch.zeros(1, 25, dtype=torch.long))


# ---- parameter groups -------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_param_groups_hold_every_trainable_parameter_once_and_lora_only_its_adapters(family):
    model = small(family, tie_embeddings=family == "gpt2")
    groups = model.param_groups()
    placed = [p for members in groups.values() for _, p in members]
    assert len(placed) == len({id(p) for p in placed}) == len(list(model.parameters()))
    lora.apply_lora(model, 2, 4.0)
    groups = model.param_groups()
    assert not groups["embed"] and not groups["other"]
    assert {n.rsplit(".", 1)[-1] for n, _ in groups["hidden"]} == {"lora_A", "lora_B"}


def test_a_parameter_in_no_group_or_in_two_is_refused_by_name():
    model = small("gpt2")
    model.blocks[0].scale = torch.nn.Parameter(torch.ones(2, 2, 2))  # 3-D: no group takes it
    with pytest.raises(ValueError, match=r"blocks\.0\.scale is in no group"):
        model.param_groups()
    del model.blocks[0].scale
    groups = model.param_groups()
    groups["other"].append(groups["hidden"][0])
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.q_proj\.weight is in hidden and other"):
        check_param_groups(model, groups)
    model.wte.weight.requires_grad_(False)
    with pytest.raises(ValueError, match=r"wte\.weight is not a trainable parameter"):
        check_param_groups(model, {"embed": [("wte.weight", model.wte.weight)]})
