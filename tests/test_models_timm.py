"""The qsnn_ models under timm's model contract (models/timm_support.py, models/weights.py):
configs, features (averaged over T), classifier reset, intermediates, grad checkpointing, fx,
torch.compile, weights from `qsnn train` and `qsnn export`, and the path of timm's train/validate
scripts. Every registered name is checked cheaply (meta device); the forward checks run one
registered name per architecture at timm-style small inputs (`*_all_registered` tests, marked
slow, run every name)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import timm
from timm.models import create_feature_extractor, get_graph_node_names

import qsnn_kernels.models as qm
from qsnn_kernels.cli import main as qsnn_main
from qsnn_kernels.models.sew_resnet import BasicBlock, SEWResNet
from qsnn_kernels.models.spikformer import Spikformer
from qsnn_kernels.models.tiny import SpikingCNNTiny
from qsnn_kernels.models.timm_support import WST_KEYS, cfg_wst
from qsnn_kernels.models.weights import read_weights
from qsnn_kernels.train import TrainConfig, run
from qsnn_kernels.train.checkpoint import save_atomic

NAMES = qm.list_models()
SMALL = {  # one registered name per architecture: kwargs, input side (timm's small test inputs)
    "qsnn_spiking_cnn_tiny": (dict(width=4), 8),
    "qsnn_sew_resnet18_cifar": ({}, 16),
    "qsnn_spikformer_4_384": (dict(img_size=16), 16),
}
WST = dict(w_bits=4, s_bits=2, t_steps=2)
CFG_KEYS = ("input_size", "mean", "std", "crop_pct", "interpolation", "num_classes", "first_conv", "classifier",
            "license", "notes")


def _small(name, **kw):
    args, side = SMALL[name]
    torch.manual_seed(0)
    model = timm.create_model(name, **{**WST, **args, **kw})
    x = torch.randn(2, model.in_chans, side, side, generator=torch.Generator().manual_seed(1))
    return model, x


def _calibrated(name, **kw):
    """A small model in eval mode whose batch norms hold one batch's statistics, so neurons fire."""
    model, x = _small(name, **kw)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None
    with torch.no_grad():
        model.train()(x)
    return model.eval(), x


# --------------------------------------------------------------------------- configs (every name)


@pytest.mark.parametrize("name", NAMES)
def test_cfg_and_model_attributes_of_every_registered_model(name):
    cfg = timm.models.get_pretrained_cfg(name).to_dict()
    assert all(cfg.get(k) is not None for k in CFG_KEYS), [k for k in CFG_KEYS if cfg.get(k) is None]
    with torch.device("meta"):
        default = timm.create_model(name)
        model = timm.create_model(name, **WST)
    assert tuple(getattr(default, k) for k in WST_KEYS) == cfg_wst(cfg)  # the cfg records the defaults
    assert {k: model._model_args[k] for k in WST_KEYS} == WST == {k: getattr(model, k) for k in WST_KEYS}
    keys = model.state_dict().keys()
    assert f"{cfg['first_conv']}.weight" in keys and f"{cfg['classifier']}.weight" in keys
    assert model.get_classifier() is model.get_submodule(cfg["classifier"])
    assert model.num_features == model.head_hidden_size == model.get_classifier().in_features
    assert model.num_classes == cfg["num_classes"] and model.in_chans == cfg["input_size"][0]
    modules = dict(model.named_modules())
    assert all(f["module"] in modules for f in model.feature_info)
    assert model.feature_info[-1]["num_chs"] == model.num_features
    data = timm.data.resolve_data_config(model=model)
    assert (data["input_size"], data["mean"], data["std"]) == (cfg["input_size"], cfg["mean"], cfg["std"])


def test_pretrained_without_a_file_is_a_clear_error():
    for name in SMALL:
        with pytest.raises(ValueError, match="no pretrained weights are published.*pretrained_cfg_overlay"):
            timm.create_model(name, pretrained=True)


# --------------------------------------------------------------------------- forward contract


def _check_head_contract(model, x):
    feats = model.forward_features(x)
    per_step = model.forward_per_step(x)
    assert per_step.shape[:2] == (model.t_steps, x.shape[0])
    torch.testing.assert_close(feats, per_step.mean(0), rtol=0, atol=0)  # features: the mean over T
    if model.token_features:
        assert feats.dim() == 3 and feats.shape[-1] == model.num_features
    else:
        assert feats.dim() == 4 and feats.shape[1] == model.num_features
    pre = model.forward_head(feats, pre_logits=True)
    assert pre.shape == (x.shape[0], model.head_hidden_size)
    logits = model(x)
    assert logits.shape == (x.shape[0], model.num_classes)
    torch.testing.assert_close(model.forward_head(feats), logits, rtol=1e-5, atol=1e-5)  # head is affine
    w_bits = model.w_bits
    model.reset_classifier(7)
    assert model(x).shape == (x.shape[0], 7) and model.get_classifier().w_bits == w_bits
    model.reset_classifier(0)
    torch.testing.assert_close(model(x), pre, rtol=1e-6, atol=1e-6)
    model.reset_classifier(0, "")
    assert model(x).shape == feats.shape
    with pytest.raises(ValueError, match="global_pool"):
        model.reset_classifier(3, "max")
    with pytest.raises(ValueError, match="num_classes"):
        model.reset_classifier(-1)


@pytest.mark.parametrize("name", SMALL)
def test_features_head_and_classifier_reset(name):
    model, x = _calibrated(name)
    _check_head_contract(model, x)
    if not model.token_features:
        with pytest.raises(ValueError, match="needs num_classes=0"):
            model.reset_classifier(3, "")


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_features_head_and_classifier_reset_all_registered(name):
    model = timm.create_model(name, t_steps=1, **({"img_size": 32} if "spikformer" in name else {})).eval()
    _check_head_contract(model, torch.randn(2, model.in_chans, 32, 32))


@pytest.mark.parametrize("name", SMALL)
def test_forward_intermediates_fx_and_features_only(name):
    model, x = _calibrated(name)
    n = len(model.feature_info)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x), rtol=0, atol=0)
        assert len(inter) == n and sum(float(t.abs().sum()) for t in inter) > 0
        for t, info in zip(inter, model.feature_info):  # NCHW, channels and reduction as feature_info says
            assert t.shape[:2] == (2, info["num_chs"]) and t.shape[-1] == x.shape[-1] // info["reduction"]
        # fx (timm's tracer with the registered leaves): time-major activations, whose mean over T they are
        names = get_graph_node_names(model)[1]
        assert "input_frames" in names and "repeat_frame" in " ".join(names)
        traced = create_feature_extractor(model, return_nodes=[f["module"] for f in model.feature_info])(x)
        for t, (key, v) in zip(inter, traced.items()):
            assert v.shape[:2] == (model.t_steps, 2), key
            mean = v.mean(0) if not model.token_features else v.mean(0).transpose(1, 2).unflatten(2, t.shape[2:])
            torch.testing.assert_close(t, mean, rtol=1e-6, atol=1e-6)
        # indices, formats, stop_early
        last2 = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert all(torch.equal(a, b) for a, b in zip(last2, inter[-2:]))
        first = model.forward_intermediates(x, indices=[0], stop_early=True, intermediates_only=True)
        assert torch.equal(first[0], inter[0])
        fmt = "NLC" if model.token_features else "NHWC"
        nhwc = model.forward_intermediates(x, indices=[-1], output_fmt=fmt, intermediates_only=True)[0]
        torch.testing.assert_close(nhwc, timm.layers.nchw_to(inter[-1], timm.layers.Format(fmt)), rtol=0, atol=0)
        with pytest.raises(ValueError, match="output_fmt"):
            model.forward_intermediates(x, output_fmt="CHW")
        # features_only: timm's getter wrapper (the default) and its fx wrapper
        args, _ = SMALL[name]
        feats = timm.create_model(name, features_only=True, out_indices=(0, n - 1), **WST, **args)
        feats.model.load_state_dict(model.state_dict(), strict=False)  # the wrapper holds the model as .model
        out = feats.eval()(x)
        assert type(feats).__name__ == "FeatureGetterNet" and len(out) == 2
        assert feats.feature_info.channels() == [model.feature_info[0]["num_chs"], model.feature_info[-1]["num_chs"]]
        torch.testing.assert_close(out[1], inter[-1], rtol=1e-6, atol=1e-6)
        graph = timm.create_model(name, features_only=True, feature_cls="fx", **WST, **args)
        assert [t.shape[0] for t in graph.eval()(x)] == [model.t_steps] * n
        # pruning keeps what the kept indices need
        keep = model.prune_intermediate_layers(indices=[0], prune_head=True)
        assert keep == [0] and isinstance(model.get_classifier(), torch.nn.Identity)
        assert torch.equal(model.forward_intermediates(x, indices=[0], intermediates_only=True)[0], inter[0])
        assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in feats.parameters())


# --------------------------------------------------------------------------- grad checkpointing


def _tiny_architectures():
    return [
        (SpikingCNNTiny(width=8, t_steps=2, w_bits=4), torch.randn(4, 1, 8, 8)),
        (SEWResNet(BasicBlock, (1, 1, 1, 1), stem="cifar", num_classes=5, w_bits=4, t_steps=2), torch.randn(2, 3, 16, 16)),
        (Spikformer(depth=2, embed_dim=32, num_heads=2, patch_size=4, img_size=16, num_classes=5, w_bits=4,
                    t_steps=2), torch.randn(2, 3, 16, 16)),
    ]


def _saved_bytes(model, x, checkpointed):
    """Bytes of the tensors autograd keeps for the backward, the output and the gradients."""
    model.set_grad_checkpointing(checkpointed)
    model.zero_grad()
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = model(x)
    y.square().sum().backward()
    return total, y.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("index", range(3), ids=["tiny", "sew_resnet", "spikformer"])
def test_grad_checkpointing_keeps_less_and_computes_the_same(index):
    torch.manual_seed(0)
    model, x = _tiny_architectures()[index]
    kept, y, grads = _saved_bytes(model.train(), x, False)
    kept_ckpt, y_ckpt, grads_ckpt = _saved_bytes(model, x, True)
    assert kept_ckpt < 0.75 * kept, (kept_ckpt, kept)
    torch.testing.assert_close(y_ckpt, y, rtol=0, atol=0)
    for g, g_ckpt in zip(grads, grads_ckpt):
        torch.testing.assert_close(g_ckpt, g, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- torch.compile


@pytest.mark.parametrize("index", range(3), ids=["tiny", "sew_resnet", "spikformer"])
def test_compile_fullgraph_without_graph_breaks(index):
    """fullgraph=True raises at the first graph break: training (forward and backward; AOT autograd
    on the tiny CNN) and eval (the int8 path where the CPU has it) each compile as one graph."""
    torch.manual_seed(0)
    model, x = _tiny_architectures()[index]
    torch._dynamo.reset()
    y = torch.compile(model.train(), fullgraph=True, backend="aot_eager" if index == 0 else "eager")(x)
    torch.testing.assert_close(y, model(x), rtol=1e-5, atol=1e-5)
    y.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    with torch.no_grad():
        y = torch.compile(model.eval(), fullgraph=True, backend="eager")(x)
        torch.testing.assert_close(y, model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("index", range(3), ids=["tiny", "sew_resnet", "spikformer"])
def test_compile_inductor_training_step_equals_eager(index):
    torch.manual_seed(0)
    model, x = _tiny_architectures()[index]
    torch._dynamo.reset()
    y = model.train()(x)
    y.square().sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    y_c = torch.compile(model, fullgraph=True)(x)
    y_c.square().sum().backward()
    torch.testing.assert_close(y_c, y, rtol=1e-4, atol=1e-4)
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(p.grad, g, rtol=1e-3, atol=1e-4)


# --------------------------------------------------------------------------- weights and export


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A real `qsnn train` run folder (tiny CNN, width 4, 4/1/2, EMA kept: a few steps)."""
    out = tmp_path_factory.mktemp("run") / "tiny"
    run(TrainConfig(model="spiking_cnn_tiny", model_kwargs={"width": 4}, wst="4/1/2", epochs=1, batch_size=32,
                    lr=5e-3, warmup_epochs=0, progress=False, max_steps_per_epoch=3, model_ema=True, output=str(out)))
    return out


def _digits(n=5):
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(3))


def test_pretrained_from_a_qsnn_train_checkpoint_and_its_export(trained_run, tmp_path):
    best = trained_run / "best.pt"
    state, info = read_weights(str(best))
    assert (info.architecture, info.wst, info.model_args) == ("qsnn_spiking_cnn_tiny", (4, 1, 2), {"width": 4})
    ckpt = torch.load(best, weights_only=True)
    assert ckpt["ema"] is not None and torch.equal(state["conv1.weight"], ckpt["ema"]["module.conv1.weight"])
    kw = dict(w_bits=4, s_bits=1, t_steps=2, width=4)
    reference = timm.create_model("qsnn_spiking_cnn_tiny", **kw)
    reference.load_state_dict(state)
    x = _digits()
    expected = reference.eval()(x)
    from_ckpt = timm.create_model("qsnn_spiking_cnn_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(best)),
                                  **kw)
    assert torch.equal(from_ckpt.eval()(x), expected)

    assert qsnn_main(["export", str(trained_run), "--output", str(tmp_path / "exp")]) == 0
    folder = tmp_path / "exp"
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors"]  # no temporary file left
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "qsnn_spiking_cnn_tiny" and config["qsnn"]["wst"] == "4/1/2"
    assert {k: config["model_args"][k] for k in (*WST_KEYS, "width")} == {**kw}
    assert config["pretrained_cfg"]["mean"] == [0.0] and config["qsnn"]["sha256"] == ckpt["sha256"]
    for model in (timm.create_model(f"local-dir:{folder}", pretrained=True),
                  timm.create_model("qsnn_spiking_cnn_tiny", pretrained=True, **kw,
                                    pretrained_cfg_overlay=dict(file=str(folder / "model.safetensors"))),
                  timm.create_model("qsnn_spiking_cnn_tiny", pretrained=True, **kw,
                                    pretrained_cfg_overlay=dict(file=str(folder)))):
        assert (model.w_bits, model.s_bits, model.t_steps, model.width) == (4, 1, 2, 4)
        assert torch.equal(model.eval()(x), expected)
    # fine-tuning: another class count keeps the backbone and gets a new classifier
    tuned = timm.create_model("qsnn_spiking_cnn_tiny", pretrained=True, num_classes=3, **kw,
                              pretrained_cfg_overlay=dict(file=str(best)))
    assert tuned.get_classifier().out_features == 3 and torch.equal(tuned.conv3.weight, state["conv3.weight"])
    features = timm.create_model(f"local-dir:{folder}", pretrained=True, features_only=True)
    assert torch.equal(features.eval()(x)[-1], reference.forward_intermediates(x, intermediates_only=True)[-1])


def test_weights_of_another_architecture_or_wst_are_refused_naming_both(trained_run, tmp_path):
    best = str(trained_run / "best.pt")
    folder = tmp_path / "exp"
    assert qsnn_main(["export", str(trained_run), "--output", str(folder), "--checkpoint", "last"]) == 0
    cases = [
        ("qsnn_spiking_cnn_tiny", dict(w_bits=8, s_bits=1, t_steps=2, width=4), best,
         r"qsnn_spiking_cnn_tiny at W/S/T 4/1/2, not .* qsnn_spiking_cnn_tiny at W/S/T 8/1/2"),
        ("qsnn_spiking_cnn_tiny", dict(w_bits=4, s_bits=1, t_steps=3, width=4), str(folder / "model.safetensors"),
         r"4/1/2, not .* 4/1/3"),
        ("qsnn_sew_resnet18_cifar", dict(w_bits=4, s_bits=1, t_steps=2), best,
         r"qsnn_spiking_cnn_tiny at W/S/T 4/1/2, not .* qsnn_sew_resnet18_cifar at W/S/T 4/1/2"),
        ("qsnn_spiking_cnn_tiny", dict(w_bits=4, s_bits=1, t_steps=2, width=8), best, "width=4.*width=8"),
    ]
    for name, kw, file, match in cases:
        with pytest.raises(ValueError, match=match):
            timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=file), **kw)
    with pytest.raises(ValueError, match=r"4/1/2, not .* 2/1/2"):
        timm.create_model(f"local-dir:{folder}", pretrained=True, w_bits=2)
    corrupted = tmp_path / "corrupted.pt"
    data = bytearray((trained_run / "best.pt").read_bytes())
    weight = torch.load(trained_run / "best.pt", weights_only=True)["model"]["conv3.weight"]
    at = data.find(weight.numpy().tobytes())  # a byte of a tensor payload: only the checksum can tell
    assert at > 0
    data[at + 5] ^= 0x01
    corrupted.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupted"):
        timm.create_model("qsnn_spiking_cnn_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(corrupted)),
                          w_bits=4, s_bits=1, t_steps=2, width=4)


def test_export_errors_are_one_line_exit_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for argv, match in ([str(tmp_path / "nowhere")], "no such run folder"), ([str(tmp_path / "empty")], "best.pt"):
        assert qsnn_main(["export", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("qsnn export: error:") and match in err and err.count("\n") == 1


@pytest.mark.parametrize("name", SMALL)
def test_export_round_trip_every_architecture(name, tmp_path):
    """A checkpoint in `qsnn train`'s format for each architecture: exported, loaded offline, equal."""
    model, x = _calibrated(name)
    args, side = SMALL[name]
    save_atomic(dict(model_name=name, wst=[WST[k] for k in WST_KEYS], epoch=0, model=model.state_dict(), ema=None,
                     config=dict(model_kwargs=args), num_classes=model.num_classes, in_chans=model.in_chans),
                str(tmp_path / "best.pt"))
    assert qsnn_main(["export", str(tmp_path)]) == 0
    folder = tmp_path / "export"
    loaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    assert tuple(getattr(loaded, k) for k in WST_KEYS) == tuple(WST.values())
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    if name.startswith("qsnn_spikformer"):
        assert loaded.img_size == side


# --------------------------------------------------------------------------- timm's train/validate path


def _image_folder(root, classes=5, per_class=2, side=12):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(root / f"class{c}" / f"{i}.png")
    return root


@pytest.mark.parametrize("name", SMALL)
def test_timm_train_and_validate_script_path(name, tmp_path):
    """What timm's train.py/validate.py do with `--model NAME --model-kwargs w_bits=..`, through timm's
    installed APIs (the scripts themselves are not installed): create_model by name, the input
    config, a loader over an image folder, one optimizer and scheduler step, then evaluation."""
    from timm.data import create_dataset, create_loader, resolve_input_data_config
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from timm.utils import accuracy

    args, side = SMALL[name]
    model = timm.create_model(name, pretrained=False, num_classes=5, drop_rate=0.0, in_chans=3, **WST, **args)
    model.set_grad_checkpointing(True)
    data_config = resolve_input_data_config(model, dict(input_size=(3, side, side)))
    assert data_config["input_size"] == (3, side, side)
    dataset = create_dataset("", root=str(_image_folder(tmp_path / "images")), is_training=True)
    loader = create_loader(dataset, input_size=data_config["input_size"], batch_size=4, is_training=True,
                           use_prefetcher=False, interpolation=data_config["interpolation"], mean=data_config["mean"],
                           std=data_config["std"], num_workers=0)
    optimizer = create_optimizer_v2(model, opt="sgd", lr=0.05, weight_decay=1e-4, momentum=0.9)
    scheduler, _ = create_scheduler_v2(optimizer, sched="cosine", num_epochs=1, warmup_epochs=0)
    groups = {len(g["params"]): g["weight_decay"] for g in optimizer.param_groups}
    assert 0.0 in groups.values()  # biases and batch norms left out of weight decay by timm's filter
    before = model.get_classifier().weight.detach().clone()
    images, target = next(iter(loader))
    loss = torch.nn.functional.cross_entropy(model.train()(images), target)
    loss.backward()
    optimizer.step()
    scheduler.step(1)
    assert torch.isfinite(loss) and not torch.equal(model.get_classifier().weight, before)
    eval_loader = create_loader(create_dataset("", root=str(tmp_path / "images")), input_size=data_config["input_size"],
                                batch_size=5, is_training=False, use_prefetcher=False, crop_pct=data_config["crop_pct"],
                                mean=data_config["mean"], std=data_config["std"], num_workers=0)
    model.eval()
    with torch.no_grad():
        for images, target in eval_loader:
            top1, top5 = accuracy(model(images), target, topk=(1, 5))
            assert 0 <= float(top1) <= 100 and float(top5) == 100.0
