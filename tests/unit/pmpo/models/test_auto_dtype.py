"""`dtype: auto` on CUDA: bf16 only where the GPU has bf16 tensor cores (compute capability >= 8.0)."""

from __future__ import annotations

import pytest
import torch

from pmpo.models import loading


@pytest.mark.parametrize(
    "capability, expected",
    [
        ((9, 0), torch.bfloat16),  # H100 / H200
        ((8, 0), torch.bfloat16),  # A100
        ((8, 6), torch.bfloat16),  # RTX 30xx, A10
        ((7, 5), torch.float16),  # T4, RTX 20xx: emulated bf16 only
        ((7, 0), torch.float16),  # V100
        ((6, 1), torch.float32),  # P40, GTX 10xx: slow half precision
    ],
)
def test_auto_dtype_on_cuda_follows_the_compute_capability(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    # torch's own check says True on pre-Ampere cards too when it can emulate bf16: it must not decide.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert loading.resolve_dtype("auto", torch.device("cuda")) == expected
    assert loading.resolve_dtype("float32", torch.device("cuda")) == torch.float32
    assert loading.resolve_dtype("bfloat16", torch.device("cuda")) == torch.bfloat16


def test_auto_dtype_on_rocm_is_bf16(monkeypatch):
    monkeypatch.setattr(torch.version, "hip", "6.2")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 4))
    assert loading.resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16


def test_auto_dtype_on_cpu_never_reads_the_gpu(monkeypatch):
    def no_gpu(device=None):
        raise AssertionError("a CPU device must not query CUDA")

    monkeypatch.setattr(torch.cuda, "get_device_capability", no_gpu)
    monkeypatch.setattr(loading, "cpu_has_fast_bf16", lambda: False)
    assert loading.resolve_dtype("auto", torch.device("cpu")) == torch.float32
