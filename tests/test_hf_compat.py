"""Our two families load strictly into Hugging Face models and give the same logits."""

import pytest
import torch

from goushi.config import preset_config
from goushi.errors import GoushiError
from goushi.hf import hf_family, to_hf
from goushi.model import GPT


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("tied", [True, False])
def test_hf_logits_match(family, tied):
    torch.manual_seed(0)
    cfg = preset_config("tiny", family, vocab_size=97, n_layer=2, n_embd=64, context_length=32, tie_embeddings=tied)
    model = GPT(cfg).eval()
    with torch.no_grad():  # non-trivial norms so a swapped scale/shift would show
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    hf = to_hf(model)
    idx = torch.randint(0, 97, (2, 17))
    ours, _ = model(idx)
    theirs = hf(idx).logits
    assert (ours - theirs).abs().max().item() < 1e-4


def test_hf_family_refuses_mixed_config():
    cfg = preset_config("tiny", "gpt2", vocab_size=50, pos_encoding="rope")
    with pytest.raises(GoushiError, match="pos_encoding=.rope."):
        hf_family(cfg)
