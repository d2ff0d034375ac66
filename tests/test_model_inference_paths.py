"""The inference-only formulations of the model code compute what the training formulations compute, and
load_pretrained (built on the meta device) gives the model that build + load_state_dict gives."""

import pytest
import torch
import torch.nn.functional as F

from steadyvoice.models import (CONFIGS, build_model, load_pretrained, read_pretrained_weights,
                                save_pretrained)
from steadyvoice.models.mossformer2 import (GatedAttentionUnit, MossFormer2SEConfig, plus_depthwise_over_time,
                                            textbook_ops)


@pytest.mark.parametrize("channels, kernel, T", [(64, 17, 50), (32, 39, 20), (8, 17, 3), (16, 5, 1)])
def test_depthwise_residual_without_autograd_equals_the_training_path(channels, kernel, T):
    torch.manual_seed(channels + kernel)
    conv = torch.nn.Conv1d(channels, channels, kernel, padding=kernel // 2, groups=channels, bias=False)
    x = torch.randn(2, T, channels)
    expected = x + F.conv1d(x.transpose(1, 2), conv.weight, padding=kernel // 2, groups=channels).transpose(1, 2)
    with torch.enable_grad(), textbook_ops():
        training = plus_depthwise_over_time(conv, x)
    with torch.no_grad():
        inference = plus_depthwise_over_time(conv, x)
    assert training.requires_grad and not inference.requires_grad
    torch.testing.assert_close(training, expected, rtol=0, atol=0)
    torch.testing.assert_close(inference, expected, rtol=1e-6, atol=1e-6)
    # (the fast training path, DepthwiseOverTime, against both: tests/test_model_grad.py)
    with torch.no_grad():
        kernel = conv.weight.detach().clone()
        plus_depthwise_over_time(conv, x)
    assert torch.equal(conv.weight, kernel)  # the identity tap is added to a copy, not to the weights


@pytest.mark.parametrize("T", [1, 5, 16, 17, 40])
def test_unpadded_groups_equal_zero_padded_groups(T):
    """attend() computes the short last group as it is; zero-padding it (the official way) gives the same."""
    cfg = MossFormer2SEConfig(model_dim=32, num_blocks=1, query_key_dim=16, rotary_dim=8, group_size=8,
                              attn_dropout=0.0)
    unit = GatedAttentionUnit(cfg).eval()
    torch.manual_seed(T)
    quad_q, lin_q, quad_k, lin_k = (torch.randn(2, T, 16) for _ in range(4))
    values = torch.randn(2, T, 64)
    pad = -T % 8
    padded = [F.pad(t, (0, 0, 0, pad)).unflatten(1, (-1, 8)) for t in (quad_q, lin_q, quad_k, lin_k, values)]
    pq, plq, pk, plk, pv = padded
    quad = (F.relu(pq @ pk.transpose(-1, -2) / 8) ** 2) @ pv
    kv = torch.einsum("bgnd,bgne->bde", plk, pv) / T
    expected = (quad + plq @ kv.unsqueeze(1)).flatten(1, 2)[:, :T]
    with torch.no_grad():
        out = unit.attend(quad_q, lin_q, quad_k, lin_k, values)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", [n for n in CONFIGS if n.endswith("-small")])
def test_load_pretrained_equals_build_and_load(tmp_path, name):
    torch.manual_seed(0)
    cfg = CONFIGS[name]
    save_pretrained(build_model(cfg), cfg, tmp_path)
    loaded, loaded_cfg = load_pretrained(tmp_path)
    assert loaded_cfg == cfg and not loaded.training
    reference = build_model(cfg)
    reference.load_state_dict(read_pretrained_weights(tmp_path)[0])
    ours = {**dict(loaded.named_parameters()), **dict(loaded.named_buffers())}
    theirs = {**dict(reference.named_parameters()), **dict(reference.named_buffers())}
    assert ours.keys() == theirs.keys()  # non-persistent buffers (fixed tables) included
    for key, tensor in theirs.items():
        assert not ours[key].is_meta, key
        assert torch.equal(ours[key], tensor), key
        assert ours[key].requires_grad == tensor.requires_grad, key
    assert all(isinstance(p, torch.nn.Parameter) for p in loaded.parameters())


def test_load_pretrained_builds_without_slow_meta_initialisers(tmp_path):
    """An initialiser without a meta kernel (nn.init.normal_) would import torch._dynamo on the meta device:
    seconds in every process that loads a model."""
    import subprocess
    import sys

    cfg = CONFIGS["mossformer2-se-48k-small"]
    save_pretrained(build_model(cfg), cfg, tmp_path)
    code = ("import sys; from steadyvoice.models import load_pretrained; load_pretrained(sys.argv[1]); "
            "print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_offset_scale_initialisation_is_unchanged():
    """OffsetScale draws its gains with randn * 0.02: the values nn.init.normal_(std=0.02) gives (training
    runs from a seed build the same model)."""
    from steadyvoice.models.mossformer2 import OffsetScale

    torch.manual_seed(3)
    unit = OffsetScale(16)
    torch.manual_seed(3)
    expected = torch.nn.init.normal_(torch.empty(4, 16), std=0.02)
    assert torch.equal(unit.gamma.detach(), expected)
