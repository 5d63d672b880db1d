"""The model's fast paths compute what the plain one does: the chunked LM-head loss, the inference arrangement
(fused q/k/v, transposed weights, one-copy KV cache), int8 layers, attention in its own dtype."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from goushi.config import preset_config
from goushi.engine import Engine, SampleConfig
from goushi.errors import GoushiError
from goushi.model import GPT, lm_head_loss
from goushi.tokenizer import Tokenizer

VARIANTS = [
    ("gpt2", {}),
    ("gpt2", {"tie_embeddings": False, "pos_encoding": "sinusoidal", "mlp": "relu2"}),
    ("llama", {}),  # RoPE, RMSNorm, SwiGLU, 2 key/value heads for 4 query heads
    ("llama", {"qk_norm": True, "n_kv_head": 4}),
]


def model_for(family: str, **kw) -> GPT:
    torch.manual_seed(0)
    cfg = preset_config("tiny", family, vocab_size=61, n_layer=2, n_head=4, n_embd=32, context_length=24, **kw)
    model = GPT(cfg).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a swapped or missing one would show
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_lm_head_loss_equals_cross_entropy_with_its_gradients(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 32, generator=g).requires_grad_()
    w = (torch.randn(97, 32, generator=g) * 0.1).requires_grad_()
    t = torch.randint(0, 97, (300,), generator=g)
    t[::7] = -100
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        ref = F.cross_entropy(F.linear(x, w).float(), t, ignore_index=-100)
    gx, gw = torch.autograd.grad(ref, (x, w))
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        ours = lm_head_loss(x, w, t, chunk=64)  # 5 chunks, the last one short
    ox, ow = torch.autograd.grad(ours * 3, (x, w))
    tol = dict(atol=1e-6, rtol=1e-5) if dtype is None else dict(atol=2e-3, rtol=2e-2)
    torch.testing.assert_close(ours, ref, **tol)
    torch.testing.assert_close(ox / 3, gx, **tol)
    torch.testing.assert_close(ow / 3, gw, **tol)
    with torch.no_grad():
        torch.testing.assert_close(lm_head_loss(x, w, t, chunk=64), ref.detach(), **tol)
    assert torch.isnan(lm_head_loss(x.detach(), w.detach(), torch.full((300,), -100)))  # as F.cross_entropy


@pytest.mark.parametrize("family,kw", VARIANTS)
def test_training_loss_is_the_cross_entropy_of_the_logits(family, kw):
    model = model_for(family, **kw).train()
    idx = torch.randint(0, 61, (3, 24), generator=torch.Generator().manual_seed(1))
    logits, loss = model(idx[:, :-1], idx[:, 1:])
    assert logits is None  # never materialised when only the loss is wanted
    plain, _ = model(idx[:, :-1])
    torch.testing.assert_close(loss, F.cross_entropy(plain.view(-1, 61), idx[:, 1:].reshape(-1)))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("family,kw", VARIANTS)
def test_inference_arrangement_equals_the_modules(family, kw):
    model = model_for(family, **kw)
    g = torch.Generator().manual_seed(2)
    idx = torch.randint(1, 61, (2, 16), generator=g)
    with torch.no_grad():  # the modules, as training and evaluation run them
        full, _ = model(idx)
    with torch.inference_mode():  # the engine's path: arranged weights, one-copy cache writes
        assert model.prepare_for_inference()
        fast, _ = model(idx)
        cache = model.new_kv_cache(2, 16)
        steps = [model(idx[:, :7], kv_cache=cache, pos=0)[0]]
        steps += [model(idx[:, p: p + 1], kv_cache=cache, pos=p)[0] for p in range(7, 16)]
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-4)
    # Left padding in a decode step: row 1's first 4 positions are padding.
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[1, :4] = False
    pos_ids = torch.stack([torch.arange(16), torch.cat([torch.zeros(4, dtype=torch.long), torch.arange(12)])])
    with torch.no_grad():
        ref, _ = model(idx, position_ids=pos_ids, key_padding_mask=mask)
    with torch.inference_mode():
        cache = model.new_kv_cache(2, 16)
        model(idx[:, :15], kv_cache=cache, pos=0, position_ids=pos_ids[:, :15], key_padding_mask=mask[:, :15])
        last, _ = model(idx[:, 15:], kv_cache=cache, pos=15, position_ids=pos_ids[:, 15:], key_padding_mask=mask)
    torch.testing.assert_close(last[:, 0], ref[:, 15], atol=1e-5, rtol=1e-4)


def test_arrangement_follows_weight_changes_and_keeps_the_checkpoint_format():
    model = model_for("gpt2")
    keys = set(model.state_dict())
    idx = torch.randint(0, 61, (1, 8), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        before, _ = model(idx)
    assert set(model.state_dict()) == keys and any(k.endswith("attn.q_proj.weight") for k in keys)
    # A fused AdamW step changes the weights without bumping their _version: the training forward drops the copy.
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
    model.train()
    model(idx, idx)[1].backward()
    opt.step()
    model.eval()
    with torch.inference_mode():
        after, _ = model(idx)
    with torch.no_grad():
        modules, _ = model(idx)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, modules, atol=1e-5, rtol=1e-4)
    # load_state_dict drops it too.
    fresh = GPT(model.config)
    fresh.load_state_dict(model.state_dict())
    with torch.inference_mode():
        fresh(idx)
        fresh.load_state_dict(model_for("gpt2").state_dict())
        again, _ = fresh(idx)
    torch.testing.assert_close(again, before, atol=1e-5, rtol=1e-4)


def test_kv_cache_keeps_k_and_v_in_one_tensor_and_reorders_rows():
    model = model_for("gpt2")
    cache = model.new_kv_cache(3, 8)
    idx = torch.randint(0, 61, (3, 5), generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        model(idx, kv_cache=cache, pos=0)
    assert cache.kv[0].shape == (2, 3, 4, 8, 8) and cache.k[0].data_ptr() == cache.kv[0].data_ptr()
    k1 = cache.k[1][2].clone()
    cache.reorder(torch.tensor([2, 0]))
    assert cache.batch == 2 and torch.equal(cache.k[1][0], k1)


def test_int8_layers_stay_close_and_leave_the_weights_alone():
    model = model_for("gpt2")
    idx = torch.randint(0, 61, (2, 12), generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        ref, _ = model(idx)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    model.prepare_for_inference(int8=lambda i, o: True)
    with torch.inference_mode():
        q8, _ = model(idx)
    assert not torch.equal(q8, ref)
    assert (q8 - ref).abs().max() < 0.05 * ref.abs().max()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in sd.items())
    model.prepare_for_inference()
    with torch.inference_mode():
        torch.testing.assert_close(model(idx)[0], ref)
    with pytest.raises(ValueError):
        GPT(model.config).to(torch.bfloat16).prepare_for_inference(int8=lambda i, o: True)


def test_engine_quantize_option():
    tok = Tokenizer.train_char(["今天我终于学会了做饭，味道还不错。"])
    torch.manual_seed(0)
    cfg = preset_config("tiny", "gpt2", vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=32, context_length=32)
    eng = Engine(GPT(cfg), tok, quantize="int8")
    assert eng.quantize_note.startswith("quantize: int8")
    g = eng.generate("今天", SampleConfig(strategy="greedy", max_new_tokens=5, min_new_tokens=5))[0]
    assert len(g.token_ids) == 5
    with pytest.raises(GoushiError, match="--quantize"):
        Engine(GPT(cfg), tok, quantize="int4")
    with pytest.raises(GoushiError, match="fp32 model on the CPU"):
        Engine(GPT(cfg).to(torch.bfloat16), tok, quantize="int8")


def test_attention_in_its_own_dtype_under_autocast():
    model = model_for("gpt2").train()
    idx = torch.randint(0, 61, (2, 24), generator=torch.Generator().manual_seed(6))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, mixed = model(idx[:, :-1], idx[:, 1:])
    for b in model.blocks:
        b.attn.attn_dtype = torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, attn32 = model(idx[:, :-1], idx[:, 1:])
    _, fp32 = model(idx[:, :-1], idx[:, 1:])
    assert abs(attn32.item() - fp32.item()) < 0.02 * fp32.item()
    assert abs(mixed.item() - fp32.item()) < 0.02 * fp32.item()
    attn32.backward()
