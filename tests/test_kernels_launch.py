"""The CuPy launcher without a GPU: a fake CuPy and fake torch streams check that torch's current stream is
wrapped once (``Stream.from_external`` on CuPy >= 14, ``ExternalStream`` before) and passed to the compiled
function explicitly, with no per-call CuPy objects."""
import types

import numpy as np
import pytest
import torch

from spikingjelly_vae.kernels import launch as L


class FakeTorchStream:
    def __init__(self, handle, protocol=True):
        self.cuda_stream, self.device = handle, torch.device("cuda", 0)
        if protocol:
            self.__cuda_stream__ = lambda: (0, handle)


def fake_cupy(with_from_external: bool, made: list):
    class Stream:
        def __init__(self, ptr):
            self.ptr = ptr
            made.append(self)

    if with_from_external:
        Stream.from_external = classmethod(lambda cls, obj: cls(obj.__cuda_stream__()[1]))

    def external_stream(ptr, device_id):
        assert device_id == 0
        return Stream(ptr)

    cuda = types.SimpleNamespace(Stream=Stream, ExternalStream=external_stream, Device=None)
    return types.SimpleNamespace(cuda=cuda, __version__="fake")


@pytest.mark.parametrize("with_from_external", [True, False])
def test_launch_passes_a_cached_wrapper_of_torchs_stream(monkeypatch, with_from_external):
    made, calls, current = [], [], {"stream": FakeTorchStream(1234, protocol=with_from_external)}
    monkeypatch.setattr(L, "import_cupy", lambda: (fake_cupy(with_from_external, made), ""))
    monkeypatch.setattr(L, "_streams", {})
    monkeypatch.setattr(L, "_function", lambda name, dtype, index: lambda *a, **k: calls.append((name, a, k)))
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: current["stream"])
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    device = torch.device("cuda", 0)
    args = (np.uint64(8), np.int64(300), np.float32(0.5))
    for _ in range(3):
        L.launch("lif_forward", torch.float32, device, 300, args)
    assert len(made) == 1 and made[0].ptr == 1234  # one wrapper for three launches
    assert [c[1] for c in calls] == [((2,), (L.BLOCK,), args)] * 3
    assert all(c[2]["stream"] is made[0] for c in calls)
    current["stream"] = FakeTorchStream(99, protocol=with_from_external)  # another stream (e.g. a side stream)
    L.launch("lif_forward", torch.float32, device, 1, args)
    assert len(made) == 2 and calls[-1][2]["stream"].ptr == 99
    L.launch("lif_forward", torch.float32, device, 0, args)  # nothing to do: no launch
    assert len(calls) == 4
