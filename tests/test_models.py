"""The zoo's architectures: torchvision parity, the paper's options, CIFAR sizes, features, errors."""

import pytest
import torch
import torchvision
from torch import nn

import backbones
from backbones import create_model, list_models
from backbones.resnet import BasicBlock, Bottleneck, ZeroPadShortcut, count_weighted_layers

IMAGENET_DEPTHS = (18, 34, 50, 101, 152)


@pytest.mark.parametrize("depth", IMAGENET_DEPTHS)
def test_torchvision_state_dict_loads_strict_and_outputs_are_identical(depth):
    torch.manual_seed(depth)
    reference = getattr(torchvision.models, f"resnet{depth}")().eval()
    with torch.no_grad():  # non-trivial BN statistics so the comparison covers them
        for module in reference.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    model = create_model(f"resnet{depth}").eval()
    model.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected, actual = reference(x), model(x)
    assert actual.shape == (2, 1000)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


@pytest.mark.parametrize("depth", IMAGENET_DEPTHS)
def test_timm_state_dict_loads_strict_and_outputs_are_identical(depth):
    timm = pytest.importorskip("timm")
    torch.manual_seed(depth)
    reference = timm.create_model(f"resnet{depth}", pretrained=False).eval()
    model = create_model(f"resnet{depth}").eval()
    model.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)


@pytest.mark.parametrize(
    "name, params_m",
    [
        ("resnet20", 0.27),
        ("resnet32", 0.46),
        ("resnet44", 0.66),
        ("resnet56", 0.85),
        ("resnet110", 1.7),
        ("resnet1202", 19.4),
    ],
)
def test_cifar_parameter_counts_match_table_6(name, params_m):
    with torch.device("meta"):
        model = create_model(name)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert params == pytest.approx(params_m, rel=0.02)
    assert count_weighted_layers(model) == int(name.removeprefix("resnet"))


@pytest.mark.parametrize("name", [n for n in list_models() if n != "resnet1202"])
def test_every_model_runs_forward_and_backward(name):
    entry = backbones.get_model_entry(name)
    size = 64 if entry.family == "imagenet" else 32
    model = create_model(name, num_classes=7)
    x = torch.randn(2, 3, size, size)
    out = model(x)
    assert out.shape == (2, 7)
    out.sum().backward()
    assert model.conv1.weight.grad is not None and torch.isfinite(model.conv1.weight.grad).all()
    depth = int("".join(ch for ch in name.split("_")[0] if ch.isdigit()))
    assert count_weighted_layers(model) == depth


def test_plain_nets_match_resnets_in_parameters_with_option_a():
    for depth in (20, 56):
        plain = sum(p.numel() for p in create_model(f"plain{depth}").parameters())
        resnet = sum(p.numel() for p in create_model(f"resnet{depth}").parameters())
        assert plain == resnet  # option A adds no parameters: same depth, width and size (§4.2)
    assert sum(p.numel() for p in create_model("resnet34_a").parameters()) == sum(
        p.numel() for p in create_model("plain34").parameters()
    )


def _block_shortcuts(model):
    return [block.downsample for block in model.modules() if isinstance(block, (BasicBlock, Bottleneck))]


def test_shortcut_options_a_b_c_none():
    a = _block_shortcuts(create_model("resnet34", shortcut="A"))
    b = _block_shortcuts(create_model("resnet34", shortcut="B"))
    c = _block_shortcuts(create_model("resnet34", shortcut="C"))
    plain = create_model("resnet34", shortcut="none")
    assert len(a) == len(b) == len(c) == 16
    assert sum(isinstance(s, ZeroPadShortcut) for s in a) == 3 and sum(s is None for s in a) == 13
    assert sum(isinstance(s, nn.Sequential) for s in b) == 3 and sum(s is None for s in b) == 13
    assert all(isinstance(s, nn.Sequential) for s in c)  # "projection shortcuts for all connections"
    assert all(s is None for s in _block_shortcuts(plain))
    assert not any(block.residual for block in plain.modules() if isinstance(block, BasicBlock))


def test_option_a_pads_zero_channels_and_subsamples():
    x = torch.randn(2, 16, 8, 8)
    y = ZeroPadShortcut(16, 32, stride=2)(x)
    assert y.shape == (2, 32, 4, 4)
    torch.testing.assert_close(y[:, :16], x[:, :, ::2, ::2])
    assert torch.count_nonzero(y[:, 16:]) == 0
    assert ZeroPadShortcut(16, 32, 2)(torch.randn(1, 16, 7, 7)).shape == (1, 32, 4, 4)  # odd sizes: like the conv


def test_residual_and_plain_blocks_differ_exactly_by_the_shortcut():
    torch.manual_seed(0)
    residual = BasicBlock(8, 8).eval()
    plain = BasicBlock(8, 8, residual=False).eval()
    plain.load_state_dict(residual.state_dict())
    x = torch.randn(1, 8, 5, 5)
    with torch.no_grad():
        branch = residual.bn2(residual.conv2(residual.relu(residual.bn1(residual.conv1(x)))))
        torch.testing.assert_close(residual(x), torch.relu(branch + x))  # Eq. 1, ReLU after the addition
        torch.testing.assert_close(plain(x), torch.relu(branch))


def test_paper_bottleneck_puts_the_stride_on_the_first_1x1():
    paper, v15 = create_model("resnet50_paper"), create_model("resnet50")
    assert paper.layer2[0].conv1.stride == (2, 2) and paper.layer2[0].conv2.stride == (1, 1)
    assert v15.layer2[0].conv1.stride == (1, 1) and v15.layer2[0].conv2.stride == (2, 2)
    assert create_model("resnet50", stride_in_1x1=True).layer3[0].conv1.stride == (2, 2)
    assert paper.state_dict().keys() == v15.state_dict().keys()  # same parameters, other computation


def test_zero_init_residual_makes_every_block_start_as_identity():
    model = create_model("resnet50", zero_init_residual=True)
    assert all(torch.count_nonzero(b.bn3.weight) == 0 for b in model.modules() if isinstance(b, Bottleneck))
    default = create_model("resnet50")
    assert all(torch.all(b.bn3.weight == 1) for b in default.modules() if isinstance(b, Bottleneck))
    block = create_model("resnet20", zero_init_residual=True).layer1[0].eval()
    x = torch.randn(1, 16, 8, 8).relu()
    torch.testing.assert_close(block(x), x)
    with pytest.raises(ValueError, match="plain"):
        create_model("plain20", zero_init_residual=True)


def test_he_initialisation_and_batchnorm_defaults():
    torch.manual_seed(0)
    conv = create_model("resnet50").layer3[1].conv2  # 256 -> 256, 3x3: fan_out = 256 * 9
    assert conv.weight.std().item() == pytest.approx((2 / (256 * 9)) ** 0.5, rel=0.05)
    bn = create_model("resnet50").layer3[1].bn2
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)


def test_grayscale_input_and_class_count():
    model = create_model("resnet20", in_chans=1, num_classes=10)
    assert model.conv1.weight.shape == (16, 1, 3, 3)
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)


@pytest.mark.parametrize(
    "name, size, expected",
    [
        (
            "resnet50",
            224,
            [("layer1", 256, 4, 56), ("layer2", 512, 8, 28), ("layer3", 1024, 16, 14), ("layer4", 2048, 32, 7)],
        ),
        (
            "resnet18",
            224,
            [("layer1", 64, 4, 56), ("layer2", 128, 8, 28), ("layer3", 256, 16, 14), ("layer4", 512, 32, 7)],
        ),
        ("resnet20", 32, [("layer1", 16, 1, 32), ("layer2", 32, 2, 16), ("layer3", 64, 4, 8)]),
    ],
)
def test_feature_extraction_names_strides_channels(name, size, expected):
    model = create_model(name).eval()
    specs = [(s.name, s.channels, s.stride) for s in model.feature_info]
    assert specs == [(n, c, s) for n, c, s, _ in expected]
    with torch.no_grad():
        features = model.forward_features(torch.randn(1, 3, size, size))
    assert list(features) == [n for n, *_ in expected]
    for (_stage, channels, stride, side), tensor in zip(expected, features.values()):
        assert tensor.shape == (1, channels, side, side) == (1, channels, size // stride, size // stride)


def test_forward_features_subset_stops_early_and_matches_full_forward():
    model = create_model("resnet18").eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        c4 = model.forward_features(x, stages=["layer3"])
        everything = model.forward_features(x)
        logits = model.forward_head(everything["layer4"])
        torch.testing.assert_close(logits, model(x))
    assert list(c4) == ["layer3"]
    torch.testing.assert_close(c4["layer3"], everything["layer3"])
    with pytest.raises(ValueError, match="unknown"):
        model.forward_features(x, stages=["layer5"])


def test_unknown_model_name_suggests_close_names():
    with pytest.raises(ValueError, match="unknown model 'resnet51'.*resnet50"):
        create_model("resnet51")
    with pytest.raises(ValueError, match="resnet20"):
        create_model("resnt20")


def test_registry_refuses_duplicates_and_unknown_options():
    with pytest.raises(ValueError, match="already registered"):
        backbones.register_model("resnet50", backbones.imagenet_resnet, "imagenet", "dup")
    with pytest.raises(TypeError, match="unknown option.*shortcuts"):
        create_model("resnet18", shortcuts="A")
    with pytest.raises(ValueError, match="shortcut must be one of"):
        create_model("resnet18", shortcut="D")
    assert list_models("plain*", family="cifar") == ["plain20", "plain32", "plain44", "plain56", "plain110"]


def test_wrong_channel_count_and_wrong_rank_give_clear_errors():
    model = create_model("resnet18")
    with pytest.raises(ValueError, match=r"expects 3 input channel\(s\), got 1"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match=r"4-D batch.*3-D tensor of shape \(3, 64, 64\).*unsqueeze"):
        model(torch.randn(3, 64, 64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        model([[1.0]])


@pytest.mark.parametrize("name", ["resnet50", "resnet20"])
def test_children_are_registered_in_execution_order(name):
    """Sequential consumers (torchvision's IntermediateLayerGetter) run the children in this order."""
    model = create_model(name).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        y = x
        for child_name, child in model.named_children():
            if child_name == "fc":
                y = torch.flatten(y, 1)
            y = child(y)
        torch.testing.assert_close(y, model(x))
