"""The fast training formulations of the MossFormer2 code (steadyvoice.models.mossformer2) against the textbook
ones (textbook_ops): the depthwise convolution's own autograd Function (gradcheck in float64, and the same
gradients as nn.Conv1d), the unpadded attention with the dropout draws of the padded one, and the loss and
gradients of a whole small MossFormer2SE in float32."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from steadyvoice.features import cropped_length, one_pass, stft
from steadyvoice.models import CONFIGS, build_model
from steadyvoice.models.mossformer2 import (DepthwiseOverTime, GatedAttentionUnit, MossFormer2SEConfig,
                                            plus_depthwise_over_time, textbook_ops)
from steadyvoice.train.losses import psm_mse


@pytest.mark.parametrize("batch, T, channels, kernel", [(2, 9, 3, 5), (1, 4, 2, 7), (3, 1, 2, 3), (1, 12, 4, 1)])
def test_depthwise_function_passes_gradcheck(batch, T, channels, kernel):
    """Kernels longer than the sequence (7 > 4) and a single frame included."""
    torch.manual_seed(batch * 100 + T)
    x = torch.randn(batch, T, channels, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(channels, 1, kernel, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(DepthwiseOverTime.apply, (x, weight))


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
@pytest.mark.parametrize("channels, kernel, T", [(64, 17, 50), (32, 39, 20), (8, 17, 3), (16, 5, 1)])
def test_depthwise_function_equals_conv1d_and_its_gradients(channels, kernel, T, dtype, tol):
    torch.manual_seed(channels + kernel + T)
    conv = torch.nn.Conv1d(channels, channels, kernel, padding=kernel // 2, groups=channels, bias=False).to(dtype)
    x = torch.randn(2, T, channels, dtype=dtype, requires_grad=True)
    upstream = torch.randn(2, T, channels, dtype=dtype)
    results = []
    for textbook in (True, False):
        conv.zero_grad()
        x.grad = None
        if textbook:
            with textbook_ops():
                out = plus_depthwise_over_time(conv, x)
            assert out.grad_fn.name() == "AddBackward0"  # x + Conv1d
        else:
            out = plus_depthwise_over_time(conv, x)
            assert out.grad_fn.name() == "DepthwiseOverTimeBackward"
        out.backward(upstream)
        results.append((out.detach(), x.grad.clone(), conv.weight.grad.clone()))
    expected = x + F.conv1d(x.transpose(1, 2), conv.weight, padding=kernel // 2, groups=channels).transpose(1, 2)
    torch.testing.assert_close(results[0][0], expected.detach(), rtol=0, atol=0)
    for fast, textbook, what in zip(results[1], results[0], ("output", "input gradient", "weight gradient")):
        assert fast.dtype == dtype and fast.shape == textbook.shape, what
        torch.testing.assert_close(fast, textbook, rtol=tol, atol=tol, msg=what)


def test_depthwise_function_under_bf16_autocast():
    """Mixed precision (train.autocast: bf16): the Function runs in the activations' dtype and gives the weight a
    float32 gradient close to the textbook one's."""
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(16, 16, 17, padding=8, groups=16, bias=False)
    x = torch.randn(1, 30, 16, requires_grad=True)
    grads = []
    for textbook in (True, False):
        conv.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16), (textbook_ops() if textbook else torch.enable_grad()):
            out = plus_depthwise_over_time(conv, x.to(torch.bfloat16))
        out.float().square().sum().backward()
        grads.append(conv.weight.grad.clone())
    assert grads[1].dtype == torch.float32
    torch.testing.assert_close(grads[1], grads[0], rtol=0.05, atol=0.05 * float(grads[0].abs().max()))


@pytest.mark.parametrize("T", [1, 5, 8, 13, 16, 40])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_unpadded_attention_trains_like_padded_groups(T, dropout):
    """attend() under autograd: the values and gradients of the zero-padded form, and in training mode the same
    dropout draws (one mask of the padded shape, cut to the short group)."""
    cfg = MossFormer2SEConfig(model_dim=32, num_blocks=1, query_key_dim=16, rotary_dim=8, group_size=8,
                              attn_dropout=dropout)
    unit = GatedAttentionUnit(cfg).train()
    torch.manual_seed(T)
    inputs = [torch.randn(2, T, 16, requires_grad=True) for _ in range(4)] + [torch.randn(2, T, 64, requires_grad=True)]
    upstream = torch.randn(2, T, 64)
    results = []
    for textbook in (True, False):
        for t in inputs:
            t.grad = None
        torch.manual_seed(123)
        if textbook:
            with textbook_ops():
                out = unit.attend(*inputs)
        else:
            out = unit.attend(*inputs)
        out.backward(upstream)
        after = torch.rand(1)  # both forms leave the random generator in the same state
        results.append((out.detach(), *(t.grad.clone() for t in inputs), after))
    for fast, textbook in zip(results[1], results[0]):
        torch.testing.assert_close(fast, textbook, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seconds", [0.25, 1.1])  # one short group; two groups, the last one short
def test_small_network_loss_and_gradients_match_the_textbook_formulations(seconds):
    """A training step's loss (PSM, dropout on) and every parameter's gradient of a small MossFormer2SE."""
    cfg = dataclasses.replace(CONFIGS["mossformer2-se-16k-small"], group_size=32)  # 28 frames; 134 = 4 x 32 + 6
    torch.manual_seed(0)
    model = build_model(cfg).train()
    n = cropped_length(int(seconds * cfg.sample_rate), cfg)  # whole frames, as training crops
    clean = 0.1 * torch.randn(2, n)
    noisy = clean + 0.05 * torch.randn(2, n)
    results = []
    for textbook in (True, False):
        model.zero_grad()
        torch.manual_seed(7)
        with textbook_ops() if textbook else torch.enable_grad():
            out = one_pass(model, noisy, cfg, reconstruct=False)
        loss = psm_mse(out.mask, out.noisy_spec, stft(clean, cfg)).mean()
        loss.backward()
        results.append((loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}))
    (loss_textbook, grads_textbook), (loss_fast, grads_fast) = results
    torch.testing.assert_close(loss_fast, loss_textbook, rtol=1e-5, atol=0)
    assert grads_fast.keys() == grads_textbook.keys()
    for name, grad in grads_textbook.items():
        scale = float(grad.abs().max())
        torch.testing.assert_close(grads_fast[name], grad, rtol=1e-4, atol=1e-5 * scale, msg=name)
