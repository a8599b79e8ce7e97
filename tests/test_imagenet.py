"""ImageNet folder data: decoding and RGB conversion, skipped corrupt files, the §3.4 augmentation,
exact resume and process splits of the DataLoader batches, and the test-time protocols."""

import re
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.transforms.v2 import functional as F

from backbones.imagenet import (
    IMAGENET_MEAN,
    IMAGENET_PCA_EIGVAL,
    IMAGENET_PCA_EIGVEC,
    IMAGENET_STD,
    CenterCrop,
    ImageFolderBatches,
    ImageFolderDataset,
    TrainAugment,
    average_softmax,
    center_crop_views,
    decode_batch,
    multiscale_views,
    pca_lighting,
    predict_image,
    protocol_views,
    resized_crop,
    resized_size,
    sample_generator,
    ten_crop_views,
)

# the tree below holds one corrupt file on purpose; the tests that look for its warning use pytest.warns
pytestmark = pytest.mark.filterwarnings("ignore:.*skipping unreadable image")

BAD_INDEX = 11  # train/cat/c_bad.jpg sorts last


def _noise(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A tiny ImageNet tree: train 3 classes x 4 images (gray, CMYK, RGBA, palette, one truncated), val 4."""
    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    ant, bee, cat = (root / "train" / name for name in ("ant", "bee", "cat"))
    for folder in (ant, bee, cat, root / "train" / ".cache"):
        folder.mkdir(parents=True)
    _noise(rng, 40, 30).save(ant / "a0.JPEG")
    _noise(rng, 30, 40).save(ant / "a1.jpg")
    _noise(rng, 40, 30).convert("L").save(ant / "a2.jpeg")
    _noise(rng, 40, 30).save(ant / "a3.JPEG")
    _noise(rng, 40, 30).convert("CMYK").save(bee / "b0.jpg")
    rgba = np.concatenate([rng.integers(0, 256, (30, 40, 3)), np.full((30, 40, 1), 128)], axis=2)
    Image.fromarray(rgba.astype(np.uint8)).save(bee / "b1.png")
    palette = _noise(rng, 40, 30).convert("P")
    palette.info["transparency"] = 0
    palette.save(bee / "b2.png", transparency=0)
    _noise(rng, 40, 30).save(bee / "b3.jpg")
    _noise(rng, 40, 30).save(cat / "c0.JPEG")
    _noise(rng, 40, 30).save(cat / "c1.jpg")
    _noise(rng, 40, 30).save(cat / "c2.png")
    _noise(rng, 64, 64).save(cat / "full.bin", format="JPEG", quality=95)
    data = (cat / "full.bin").read_bytes()
    (cat / "c_bad.jpg").write_bytes(data[: len(data) // 2])
    (cat / "notes.txt").write_text("not an image")
    for name, count in (("ant", 1), ("bee", 1), ("cat", 2)):
        (root / "val" / name).mkdir(parents=True)
        for i in range(count):
            _noise(rng, 40, 30).save(root / "val" / name / f"v{i}.JPEG")
    return root


@pytest.fixture(scope="module")
def train_set(root):
    return ImageFolderDataset(root, "train")


def _collect(source, epoch, start=0):
    return [(x.clone(), y.clone()) for x, y in source.batches(epoch, start)]


def _assert_same_batches(actual, expected):
    assert len(actual) == len(expected)
    for (x, y), (x_ref, y_ref) in zip(actual, expected):
        torch.testing.assert_close(x, x_ref, rtol=0, atol=0)
        assert torch.equal(y, y_ref)


@pytest.fixture(scope="module")
def reference_epoch(train_set):
    """Epoch 2 of the training batches, single process, no workers: what every other setup must match."""
    return _collect(ImageFolderBatches(train_set, 4, seed=3), epoch=2)


# ---------------------------------------------------------------- the folder and decoding
def test_classes_are_sorted_folders_and_files_filtered_by_extension(train_set):
    assert train_set.class_names == ["ant", "bee", "cat"]
    names = [path.name for path, _ in train_set.samples]
    assert names == ["a0.JPEG", "a1.jpg", "a2.jpeg", "a3.JPEG", "b0.jpg", "b1.png", "b2.png", "b3.jpg",
                     "c0.JPEG", "c1.jpg", "c2.png", "c_bad.jpg"]  # fmt: skip
    assert train_set.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert train_set.path(4) == train_set.directory / "bee" / "b0.jpg"


def test_every_mode_is_decoded_to_rgb(train_set, root):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # palette-with-transparency must convert without PIL's warning
        samples = {train_set.path(i).name: train_set[i] for i in range(BAD_INDEX)}
    for name, (image, _label) in samples.items():
        assert image.mode == "RGB", name
        assert image.size == ((30, 40) if name == "a1.jpg" else (40, 30)), name
    assert samples["a0.JPEG"][1] == 0 and samples["b0.jpg"][1] == 1 and samples["c0.JPEG"][1] == 2
    gray = np.asarray(samples["a2.jpeg"][0])
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 1], gray[..., 2])
    rgba = np.asarray(Image.open(root / "train" / "bee" / "b1.png"))
    assert np.array_equal(np.asarray(samples["b1.png"][0]), rgba[..., :3])
    assert np.asarray(samples["b0.jpg"][0]).std() > 20  # CMYK decoded to a real picture, not a flat one


def test_corrupt_image_warns_with_its_name_and_is_skipped(train_set):
    with pytest.warns(UserWarning, match=r"c_bad\.jpg: skipping unreadable image \(.*truncated") as record:
        assert train_set[BAD_INDEX] is None
    assert len(record) == 1


@pytest.mark.parametrize("num_workers", [0, 2])
def test_skipped_samples_are_counted_and_dropped_from_their_batch(train_set, num_workers):
    source = ImageFolderBatches(train_set, 4, shuffle=False, num_workers=num_workers)
    if num_workers == 0:
        with pytest.warns(UserWarning, match=r"c_bad\.jpg"):
            batches = _collect(source, epoch=0)
    else:  # the warning is printed by the worker process; the count still reaches this one
        batches = _collect(source, epoch=0)
    assert [len(y) for _, y in batches] == [4, 4, 3]
    assert batches[2][1].tolist() == [2, 2, 2]
    assert source.skipped == 1
    _collect(source, epoch=1)
    assert source.skipped == 1, "the count is per epoch, not cumulative"
    _collect(source, epoch=1, start=2)  # a resumed epoch counts from its first batch
    assert source.skipped == 1
    next(source.batches(2))
    assert source.skipped == 0, "the count restarts with every epoch"


def test_missing_or_empty_directories_name_the_path(tmp_path):
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "train")) + ".*not found"):
        ImageFolderDataset(tmp_path, "train")
    (tmp_path / "val").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG")  # the unsorted val layout
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "val")) + ": no class folders"):
        ImageFolderDataset(tmp_path, "val")
    (tmp_path / "train" / "n01440764").mkdir(parents=True)
    (tmp_path / "train" / "n01440764" / "README.txt").write_text("no images here")
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "train")) + ": no images"):
        ImageFolderDataset(tmp_path, "train")


def test_expected_class_names_must_match_the_folders(root):
    assert ImageFolderDataset(root, "val", class_names=["ant", "bee", "cat"]).class_names == ["ant", "bee", "cat"]
    with pytest.raises(ValueError, match=r"val: class folders do not match.*missing \['cow'\]"):
        ImageFolderDataset(root, "val", class_names=["ant", "bee", "cat", "cow"])


# ---------------------------------------------------------------- augmentation
def test_training_crops_are_224_and_normalised(reference_epoch):
    assert all(tuple(x.shape[1:]) == (3, 224, 224) for x, _ in reference_epoch)
    assert sorted(len(y) for _, y in reference_epoch) == [3, 4, 4]  # the corrupt file is missing from one batch
    x, y = reference_epoch[0]
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert -3 < x.min() < -1 and 1 < x.max() < 3.5  # noise images span [0, 1] before normalisation


def test_augmentation_is_a_function_of_seed_epoch_and_index(train_set):
    image, _ = train_set[0]
    augment = TrainAugment()
    first = augment(image, sample_generator(0, 1, 5))
    torch.testing.assert_close(augment(image, sample_generator(0, 1, 5)), first, rtol=0, atol=0)
    for other in (sample_generator(0, 2, 5), sample_generator(0, 1, 6), sample_generator(1, 1, 5)):
        assert not torch.equal(augment(image, other), first)


def test_workers_send_uint8_crops_and_the_batch_is_finished_exactly_as_one_image_would_be(train_set):
    """Lighting and normalisation run once per batch (on the training device) after the workers'
    uint8 crops: the result is bit-identical to the per-image transform with the same draws."""
    source = ImageFolderBatches(train_set, 4, seed=3, shuffle=False)
    images, labels = next(source.batches(epoch=2))
    expected = torch.stack([TrainAugment()(train_set[i][0], sample_generator(3, 2, i)) for i in range(4)])
    torch.testing.assert_close(images, expected, rtol=0, atol=0)
    assert labels.tolist() == [train_set[i][1] for i in range(4)]
    pixels, alpha = TrainAugment().crop(train_set[0][0], sample_generator(3, 2, 0))
    assert pixels.dtype == torch.uint8 and pixels.shape == (3, 224, 224) and alpha.shape == (3,)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="finishing batches on the GPU needs a CUDA device")
def test_batches_are_finished_on_the_training_device(train_set, reference_epoch):
    batches = _collect(ImageFolderBatches(train_set, 4, seed=3, device="cuda"), epoch=2)
    assert all(x.is_cuda for x, _ in batches)
    for (x, y), (x_ref, y_ref) in zip(batches, reference_epoch):
        assert torch.equal(y, y_ref)
        torch.testing.assert_close(x.cpu(), x_ref, rtol=0, atol=1e-5)


def test_the_epoch_changes_each_samples_augmentation(train_set):
    source = ImageFolderBatches(train_set, 4, shuffle=False)
    (x0, y0), (x1, y1) = next(source.batches(0)), next(source.batches(1))
    assert torch.equal(y0, y1)
    assert all(not torch.equal(a, b) for a, b in zip(x0, x1))


def test_uint8_tensors_take_the_same_random_crops_as_pil_images(train_set):
    """gpu_decode augments decoded uint8 tensors: same draws, same crops, only the resizer differs."""
    image, _ = train_set[0]
    tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1)
    for index in range(3):
        from_pil = TrainAugment()(image, sample_generator(0, 0, index))
        from_tensor = TrainAugment()(tensor, sample_generator(0, 0, index))
        assert from_tensor.shape == (3, 224, 224) and (from_tensor - from_pil).abs().mean() < 0.01
    assert (CenterCrop()(tensor) - CenterCrop()(image)).abs().mean() < 0.01


@pytest.mark.parametrize("size", [(375, 500), (500, 333), (200, 150), (256, 256)])
def test_resampling_only_the_crop_equals_resize_then_crop(size):
    """TrainAugment and CenterCrop resample just the crop's box of a PIL image: the pixels of
    torchvision's resize-then-crop within 2 of 255 levels (rounding between PIL's two passes)."""
    height, width = size
    rng = np.random.default_rng(height)
    coarse = Image.fromarray(rng.integers(0, 256, (height // 20 + 2, width // 20 + 2, 3), dtype=np.uint8))
    photo = np.asarray(coarse.resize((width, height), Image.BICUBIC), dtype=np.int16)
    image = Image.fromarray(np.clip(photo + rng.integers(-12, 13, photo.shape), 0, 255).astype(np.uint8))
    for shorter in (224, 256, 311, 480):
        resized = F.resize(image, [shorter], antialias=True)
        assert resized_size((height, width), shorter) == (resized.height, resized.width)
        bottom, right = resized.height - 224, resized.width - 224
        for top, left in ((0, 0), (bottom, right), (min(7, bottom), min(13, right))):
            expected = np.asarray(F.crop(resized, top, left, 224, 224), dtype=np.int16)
            got = np.asarray(resized_crop(image, (resized.height, resized.width), top, left, 224), dtype=np.int16)
            assert got.shape == (224, 224, 3)
            assert np.abs(got - expected).max() <= 2 and np.abs(got - expected).mean() < 0.3  # of 255 levels
    reference = F.center_crop(F.resize(image, [256], antialias=True), [224, 224])
    expected = F.normalize(F.to_dtype(F.pil_to_tensor(reference), torch.float32, scale=True),
                           list(IMAGENET_MEAN), list(IMAGENET_STD))  # fmt: skip
    assert (CenterCrop()(image) - expected).abs().max() < 2.01 / 255 / min(IMAGENET_STD)


def test_scale_range_and_crop_are_checked():
    with pytest.raises(ValueError, match="crop_size"):
        TrainAugment(scale=(200, 480))


def test_pca_lighting_shifts_each_channel_along_the_imagenet_eigenvectors():
    vectors = torch.tensor(IMAGENET_PCA_EIGVEC)
    torch.testing.assert_close(vectors.T @ vectors, torch.eye(3), atol=2e-3, rtol=0)
    x = torch.rand(3, 5, 7)
    shifted = pca_lighting(x, torch.tensor([1.0, 0.0, 0.0]))
    expected = IMAGENET_PCA_EIGVAL[0] * vectors[:, 0]
    torch.testing.assert_close(shifted - x, expected.view(3, 1, 1).expand(3, 5, 7))
    batch = pca_lighting(torch.zeros(2, 3, 4, 4), torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    torch.testing.assert_close(batch[0, :, 0, 0], expected)
    torch.testing.assert_close(batch[1], torch.zeros(3, 4, 4))


def test_lighting_in_the_recipe_is_a_small_per_channel_colour_shift(train_set):
    image, _ = train_set[0]
    with_lighting, without = TrainAugment(), TrainAugment(alphastd=0)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    shifts = []
    for index in range(20):
        lit, plain = with_lighting(image, sample_generator(0, 0, index)), without(image, sample_generator(0, 0, index))
        delta = (lit - plain) * std
        torch.testing.assert_close(delta, delta[:, :1, :1].expand_as(delta), atol=1e-5, rtol=0)  # same for every pixel
        shifts.append(delta[:, 0, 0])
    shifts = torch.stack(shifts).abs()
    assert 0 < shifts.max() < 0.1 and shifts.mean() > 1e-3


# ---------------------------------------------------------------- resume, workers, processes
@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_from_batch_k_gives_exactly_the_tail(train_set, reference_epoch, num_workers):
    source = ImageFolderBatches(train_set, 4, seed=3, num_workers=num_workers)
    assert len(source) == 3 and source.num_samples == 12
    _assert_same_batches(_collect(source, epoch=2), reference_epoch)
    next(source.batches(7))  # an epoch abandoned after one batch must not disturb the next one
    for start in (1, 2, 3):
        _assert_same_batches(_collect(source, epoch=2, start=start), reference_epoch[start:])
    with pytest.raises(ValueError, match="start batch 4"):
        next(source.batches(2, start=4))


def test_two_processes_together_give_the_single_process_batch(train_set, reference_epoch):
    shares = [_collect(ImageFolderBatches(train_set, 4, seed=3, rank=rank, world_size=2), epoch=2) for rank in (0, 1)]
    for (x0, y0), (x1, y1), (x, y) in zip(*shares, reference_epoch):
        torch.testing.assert_close(torch.cat([x0, x1]), x, rtol=0, atol=0)
        assert torch.equal(torch.cat([y0, y1]), y)


def test_batch_source_arguments_are_checked(train_set):
    with pytest.raises(ValueError, match="global batch 4 is not divisible by 3"):
        ImageFolderBatches(train_set, 4, world_size=3)
    with pytest.raises(ValueError, match="12 images are fewer than one batch of 16"):
        ImageFolderBatches(train_set, 16)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="gpu_decode=True needs a CUDA device"):
            ImageFolderBatches(train_set, 4, gpu_decode=True)


def test_evaluation_batches_keep_order_and_every_sample(root):
    source = ImageFolderBatches(ImageFolderDataset(root, "val"), 3, train=False)
    batches = _collect(source, epoch=0)
    assert len(source) == 2 and [tuple(x.shape) for x, _ in batches] == [(3, 3, 224, 224), (1, 3, 224, 224)]
    assert torch.cat([y for _, y in batches]).tolist() == [0, 1, 2, 2]
    image, _ = source.dataset[0]
    torch.testing.assert_close(batches[0][0][0], CenterCrop()(image), rtol=0, atol=0)
    _assert_same_batches(_collect(source, epoch=5), batches)


def test_batched_decoding_falls_back_per_image_and_skips_what_nothing_decodes(train_set):
    """The decoding behind gpu_decode, run on the CPU: one bad JPEG must not lose the rest of the batch."""
    datas = [train_set.read_bytes(i)[0] for i in range(len(train_set))]
    paths = [train_set.path(i) for i in range(len(train_set))]
    with pytest.warns(UserWarning, match=r"c_bad\.jpg: skipping unreadable image") as record:
        images = decode_batch(datas, paths, torch.device("cpu"))
    assert len(record) == 1 and images[BAD_INDEX] is None
    for index, image in enumerate(images[:BAD_INDEX]):
        expected = torch.from_numpy(np.array(train_set[index][0])).permute(2, 0, 1)
        assert image.dtype == torch.uint8 and image.shape == expected.shape, train_set.path(index)
        if train_set.path(index).suffix == ".png":  # decoded by PIL, exactly as the CPU path does
            assert torch.equal(image, expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="gpu_decode decodes with nvJPEG on a CUDA device")
def test_gpu_decode_gives_augmented_batches_on_the_gpu(train_set, reference_epoch):
    source = ImageFolderBatches(train_set, 4, seed=3, gpu_decode=True)
    batches = _collect(source, epoch=2)
    assert all(x.is_cuda and x.shape[1:] == (3, 224, 224) and x.dtype == torch.float32 for x, _ in batches)
    assert sum(len(y) for _, y in batches) + source.skipped == 12  # nvJPEG may decode the truncated file
    for (x, y), (x_ref, y_ref) in zip(batches, reference_epoch):
        if len(y) == len(y_ref):
            assert torch.equal(y.cpu(), y_ref)
            assert (x.cpu() - x_ref).abs().mean() < 0.1  # same crops; decoders and resizers differ slightly


# ---------------------------------------------------------------- test-time protocols
def test_protocols_give_the_paper_number_of_views(train_set):
    image, _ = train_set[0]  # 40 x 30
    assert tuple(center_crop_views(image).shape) == (1, 3, 224, 224)
    assert tuple(ten_crop_views(image).shape) == (10, 3, 224, 224)
    scales = (224, 256, 320)
    views = multiscale_views(image, scales)
    assert [tuple(v.shape) for v in views] == [(2, 3, s, int(s * 40 / 30)) for s in scales]
    assert sum(len(v) for v in protocol_views(image, "multiscale")) == 2 * 5
    assert [len(v) for v in protocol_views(image, "10crop")] == [10]
    with pytest.raises(ValueError, match="unknown test protocol 'dense'"):
        protocol_views(image, "dense")


def test_protocol_views_are_the_crops_and_flips_they_claim():
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    ten = ten_crop_views(image)
    torch.testing.assert_close(ten[4], center_crop_views(image)[0])
    torch.testing.assert_close(ten[9], ten[4].flip(-1))  # flipped center
    torch.testing.assert_close(ten[5], ten[1].flip(-1))  # top-left of the flip = flipped top-right
    assert not torch.equal(ten[0], ten[1])
    whole = multiscale_views(image, (224,))[0]
    torch.testing.assert_close(whole[1], whole[0].flip(-1))


def test_scores_are_softmax_averaged_over_all_views(train_set):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 5, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    image, _ = train_set[0]
    scores = predict_image(model, image, "multiscale", scales=(224, 256))
    with torch.no_grad():
        views = multiscale_views(image, (224, 256))
        expected = torch.cat([model(v).softmax(1) for v in views]).mean(0)
    torch.testing.assert_close(scores, expected)
    assert scores.shape == (5,) and abs(float(scores.sum()) - 1) < 1e-5
    single = center_crop_views(image)
    torch.testing.assert_close(average_softmax(model, single), model(single).softmax(1)[0])
