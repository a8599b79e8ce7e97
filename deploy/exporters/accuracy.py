"""The reduced-precision check of a classifier artifact on real held-out images.

The artifact and the fp32 PyTorch model see the same preprocessed batches. Recorded: top-1
agreement and the logits error (||y - y_fp32|| / ||y_fp32|| over all images, and the largest
absolute difference); on labelled images also both top-1 accuracies and the drop. The export fails
when the drop exceeds ``max_drop`` points. On unlabelled images the disagreement rate bounds the
drop from above (an image can only lose accuracy where the two disagree), so it is held to the same
limit: conservative, never lenient.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..preprocess import Preprocessor
from .common import ExportError
from .images import ImageSet


def compare_on_real_images(reference: torch.nn.Module, run: Callable[[torch.Tensor], torch.Tensor], images: ImageSet,
                           preprocess: Preprocessor, max_drop: float, label: str,
                           batch_size: int = 64) -> dict[str, Any]:  # fmt: skip
    ref_logits, got_logits, labels = [], [], []
    for batch, batch_labels in images.batches(preprocess, batch_size):
        with torch.no_grad():
            ref_logits.append(reference(batch).double())
        try:
            got_logits.append(run(batch).double())
        except Exception as error:  # any failure of the artifact on a real batch is an export failure
            raise ExportError(f"{label}: running the artifact on {images.name} failed ({type(error).__name__}: "
                              f"{error})") from None  # fmt: skip
        if batch_labels is not None:
            labels += batch_labels
    ref, got = torch.cat(ref_logits), torch.cat(got_logits)
    agreement = float((ref.argmax(1) == got.argmax(1)).double().mean())
    record: dict[str, Any] = {
        "reference": "PyTorch eager, fp32, cpu", **images.describe(),
        "top1_agreement": agreement,
        "logits_rel_error": float((got - ref).norm() / ref.norm().clamp_min(1e-30)),
        "logits_max_abs_error": float((got - ref).abs().max()),
        "max_accuracy_drop": max_drop,
    }  # fmt: skip
    if labels:
        truth = torch.tensor(labels)
        fp32 = 100 * float((ref.argmax(1) == truth).double().mean())
        artifact = 100 * float((got.argmax(1) == truth).double().mean())
        record.update(top1_accuracy={"fp32": fp32, "artifact": artifact}, accuracy_drop=fp32 - artifact)
        drop, what = fp32 - artifact, f"top-1 accuracy {artifact:.2f} % vs fp32 {fp32:.2f} %"
    else:
        drop, what = 100 * (1 - agreement), f"top-1 agreement with fp32 {100 * agreement:.2f} % (no labels)"
        record["disagreement_points"] = drop
    print(f"{label} on {len(images)} real images ({images.name}): {what}, logits error "
          f"{record['logits_rel_error']:.2e} relative")  # fmt: skip
    if drop > max_drop:
        raise ExportError(f"{label}: on {len(images)} images of {images.name}, {what}: loses {drop:.2f} points, more "
                          f"than --max-accuracy-drop {max_drop:g}")  # fmt: skip
    return record
