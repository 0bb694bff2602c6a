"""Event input: every architecture takes frames [B, T, C, H, W], one frame per time step."""

import pytest
import torch

import qsnn_kernels.models as qm

MODELS = {  # name: keyword arguments for a small event-data build (2 polarity channels)
    "qsnn_spiking_cnn_tiny": {},
    "qsnn_sew_resnet18_cifar": {},
    "qsnn_spikformer_4_384": {"img_size": 32},
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_event_frames_one_per_step(name):
    torch.manual_seed(0)
    t = 2
    model = qm.create_model(name, w_bits=4, s_bits=2, t_steps=t, num_classes=5, in_chans=2, **MODELS[name]).eval()
    frames = torch.rand(2, t, 2, 32, 32) * 3
    with torch.no_grad():
        out = model(frames)
        assert out.shape == (2, 5) and torch.isfinite(out).all()
        # one frame per step: the same frame at both steps is the image input repeated (direct encoding)
        same = frames[:, :1].expand(-1, t, -1, -1, -1).contiguous()
        torch.testing.assert_close(model(same), model(frames[:, 0]))
    with pytest.raises(ValueError, match="event input must be"):
        model(torch.rand(2, t + 1, 2, 32, 32))
