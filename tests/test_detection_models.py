"""Faster R-CNN (C4 and FPN) on zoo backbones: structure from feature_info, frozen BN, freezing."""

import pytest
import torch
from torchvision.ops.misc import FrozenBatchNorm2d

from backbones import create_model
from backbones.weights import save_weights
from detection.models import build_faster_rcnn, freeze_batchnorm

SMALL = dict(min_size=96, max_size=96, anchor_sizes=(16, 32, 64), rpn_post_nms_top_n_train=64,
             rpn_pre_nms_top_n_train=128, box_batch_size_per_image=32)  # fmt: skip


def _targets(n=2):
    return [{"boxes": torch.tensor([[8.0, 10.0, 50.0, 60.0], [40.0, 30.0, 90.0, 80.0]]), "labels": torch.tensor([1, 3])}
            for _ in range(n)]  # fmt: skip


def test_c4_uses_all_but_the_last_stage_as_trunk_and_the_last_stage_as_head():
    model = build_faster_rcnn("resnet18", 4, design="c4", **SMALL)
    trunk = model.backbone
    assert trunk.out_channels == 256 and "layer4" not in dict(trunk.named_children())
    assert list(dict(trunk.named_children())) == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3"]
    assert model.roi_heads.box_roi_pool.output_size == (14, 14)
    assert model.roi_heads.box_head.stage[0].conv1.in_channels == 256  # conv5_1 on the pooled regions
    assert model.roi_heads.box_predictor.cls_score.out_features == 5  # 4 classes + background
    assert model.roi_heads.box_predictor.bbox_pred.in_features == 512
    features = trunk(torch.randn(1, 3, 96, 96))["0"]
    assert features.shape == (1, 256, 6, 6)  # stride 16


def test_c4_on_a_cifar_net_reads_channels_from_feature_info():
    model = build_faster_rcnn("resnet20", 2, design="c4", **SMALL)
    assert model.backbone.out_channels == 32  # layer2 of the 6n+2 family
    assert model.roi_heads.box_predictor.bbox_pred.in_features == 64


def test_batchnorm_is_frozen_and_freeze_at_stops_gradients():
    model = build_faster_rcnn("resnet18", 3, design="c4", freeze_at=2, **SMALL)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    body = model.backbone
    assert not body.conv1.weight.requires_grad and not any(p.requires_grad for p in body.layer1.parameters())
    assert all(p.requires_grad for p in body.layer2.parameters())
    none_frozen = build_faster_rcnn("resnet18", 3, design="c4", freeze_at=0, **SMALL)
    assert none_frozen.backbone.conv1.weight.requires_grad
    with pytest.raises(ValueError, match=r"freeze_at must lie in \[0, 4\]"):
        build_faster_rcnn("resnet18", 3, freeze_at=5)


def test_frozen_batchnorm_computes_what_eval_mode_batchnorm_did():
    net = create_model("resnet20").eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = net(x)
        frozen = freeze_batchnorm(net).train()  # training mode too: the statistics stay fixed
        torch.testing.assert_close(frozen(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch, design", [("resnet20", "c4"), ("resnet20", "fpn"), ("resnet18", "fpn")])
def test_training_step_and_inference_output(arch, design):
    torch.manual_seed(0)
    model = build_faster_rcnn(arch, 4, design=design, fpn_channels=32, **SMALL)
    images = [torch.rand(3, 96, 96), torch.rand(3, 80, 96)]
    losses = model(images, _targets())
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    sum(losses.values()).backward()
    assert model.roi_heads.box_predictor.cls_score.weight.grad is not None
    model.eval()
    with torch.no_grad():
        outputs = model(images)
    assert len(outputs) == 2 and outputs[1]["boxes"].shape[1] == 4
    assert outputs[1]["boxes"][:, 2].max() <= 96 and outputs[1]["boxes"][:, 3].max() <= 80  # original coordinates
    assert ((outputs[0]["labels"] >= 1) & (outputs[0]["labels"] <= 4)).all()


def test_backbone_weights_come_from_the_zoo_or_a_file(tmp_path):
    torch.manual_seed(3)
    classifier = create_model("resnet20", in_chans=1, num_classes=10)
    path = tmp_path / "r20.safetensors"
    save_weights(classifier, path)
    model = build_faster_rcnn("resnet20", 2, backbone_weights=path, **SMALL)
    torch.testing.assert_close(model.backbone.conv1.weight, classifier.conv1.weight)
    assert model.backbone_info.in_chans == 1 and len(model.transform.image_mean) == 1
    with pytest.raises(ValueError, match="does not fit resnet56"):
        build_faster_rcnn("resnet56", 2, backbone_weights=path)


def test_fpn_parts_of_torchvisions_v2_are_keyword_options():
    from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, TwoMLPHead

    v1 = build_faster_rcnn("resnet18", 3, design="fpn", **SMALL)
    v2 = build_faster_rcnn("resnet18", 3, design="fpn", rpn_conv_depth=2, fpn_batchnorm=True, box_head="conv_fc",
                           **SMALL)  # fmt: skip
    assert isinstance(v1.roi_heads.box_head, TwoMLPHead) and isinstance(v2.roi_heads.box_head, FastRCNNConvFCHead)
    assert len(v1.rpn.head.conv) == 1 and len(v2.rpn.head.conv) == 2
    fpn_norms = [m for m in v2.backbone.fpn.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(fpn_norms) == 8 and not any(isinstance(m, torch.nn.BatchNorm2d) for m in v1.backbone.fpn.modules())
    assert not any(type(m) is torch.nn.BatchNorm2d for m in v2.backbone.body.modules())  # the ResNet's BN stays frozen
    v2.train()
    losses = v2([torch.rand(3, 96, 96), torch.rand(3, 96, 96)], _targets())
    assert all(torch.isfinite(v) for v in losses.values())
    with pytest.raises(ValueError, match=r"box_head must be one of \('mlp', 'conv_fc'\) for design 'fpn', got 'fc'"):
        build_faster_rcnn("resnet18", 3, design="fpn", box_head="fc")
    with pytest.raises(ValueError, match=r"box_head must be one of \('last_stage',\) for design 'c4'"):
        build_faster_rcnn("resnet18", 3, design="c4", box_head="conv_fc")
    with pytest.raises(ValueError, match="fpn_batchnorm applies to design 'fpn' only"):
        build_faster_rcnn("resnet18", 3, design="c4", fpn_batchnorm=True)
    with pytest.raises(ValueError, match="rpn_conv_depth must be positive, got 0"):
        build_faster_rcnn("resnet18", 3, design="fpn", rpn_conv_depth=0)
