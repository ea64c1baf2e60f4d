"""Class activation maps (pytorch-grad-cam) computed through the fused classifier.

The CAM methods of pytorch-grad-cam expect a single-input model. :class:`FusedImageClassifier`
is that model: one view's image tensor -> image encoder -> the view's slot in the study ->
fusion head, with the study's other views (as embeddings) and its report embedding held fixed
-> logits. The image branch is differentiated, the report is a constant, so the map answers
"where in this view did the fused model look for this label".

Where the CAM hooks: for CNNs, the output of ``encoder.forward_features`` (the activated map
that the pooled features are computed from: ``relu(norm5)`` of DenseNet, ReLU6 of
EfficientNet-Lite's head, ``layer4`` of ResNet), through an identity module of the wrapper, so
that activations and gradients are those of the map the head actually reads. Hooking a
pre-activation layer (``encoder.target_layer`` is ``norm5`` / ``_bn1`` for DenseNet /
EfficientNet-Lite) lets negative or clipped pre-activations into the map. A ViT is hooked at the
input norm of its last block (the patch tokens get no gradient at the block output when only
the class token is read) with :meth:`ViTEncoder.tokens_to_map` as the reshape transform.
In-place ReLUs (torchxrayvision's DenseNet) are switched off while a CAM runs
(:func:`non_inplace_relu`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn

from cxrfuse.encoders import ImageEncoder, ViTEncoder
from cxrfuse.problems import CxrfuseError

if TYPE_CHECKING:
    from pytorch_grad_cam.base_cam import BaseCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from cxrfuse.fusion import FusionHead

OutputKind = Literal["sigmoid", "softmax"]

CAM_METHODS: dict[str, str] = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "hirescam": "HiResCAM",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "gradcam-elementwise": "GradCAMElementWise",
    "eigencam": "EigenCAM",
    "eigengradcam": "EigenGradCAM",
    "scorecam": "ScoreCAM",
    "ablationcam": "AblationCAM",
    "random": "RandomCAM",
}
"""CAM method name (the ``--method`` choices) -> its pytorch-grad-cam class name (the
package loads when a map is computed: it pulls torchvision's model zoo, scikit-learn and
matplotlib, seconds a verb that draws no map should not wait)."""


def cam_class(method: str) -> type[BaseCAM]:
    """The pytorch-grad-cam class of ``method``; a clear error naming the choices."""
    try:
        name = CAM_METHODS[method.lower()]
    except KeyError:
        raise CxrfuseError(
            f"unknown CAM method {method!r}; choose one of {', '.join(CAM_METHODS)}"
        ) from None
    import pytorch_grad_cam

    return getattr(pytorch_grad_cam, name)


# ----------------------------------------------------------------------------- the model


class FusedImageClassifier(nn.Module):
    """The fused classifier as a function of one view's image tensor.

    ``views`` (B or 1, V, D) and ``view_mask`` (B or 1, V) are the study's view embeddings;
    slot ``slot`` is replaced by the encoder's output for the input image (and marked present).
    ``text`` (B or 1, Dt) and ``text_mask`` (B or 1,) are the report embeddings, held fixed.
    A head that reads only images ignores the text; one view per study needs no ``views``.
    """

    def __init__(
        self,
        encoder: ImageEncoder,
        head: FusionHead,
        *,
        views: torch.Tensor | None = None,
        view_mask: torch.Tensor | None = None,
        slot: int = 0,
        text: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if "image" not in head.modalities:
            raise CxrfuseError(
                "this model reads no images (modalities "
                f"{head.modalities}): there is nothing for an image explanation to show"
            )
        if "text" in head.modalities and text is None:
            raise CxrfuseError("this fused model reads the report: pass the study's text embedding")
        self.encoder = encoder
        self.head = head
        self.feature_map = nn.Identity()  # the hook point: the map the pooled features come from
        self.slot = slot
        self.views = views
        self.view_mask = view_mask
        self.text = text
        self.text_mask = text_mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and not x.requires_grad:
            x = x.detach().requires_grad_(True)  # gradients reach a frozen encoder's layers
        if isinstance(self.encoder, ViTEncoder):
            features = self.encoder(x)  # the class token: hooked inside the encoder
        else:
            features = self.encoder.pool(self.feature_map(self.encoder.forward_features(x)))
        batch = features.shape[0]
        if self.views is None:
            image = features[:, None, :]
            image_mask = torch.ones(batch, 1, dtype=torch.bool, device=features.device)
        else:
            context = self.views.to(features).expand(batch, -1, -1)
            image = torch.cat(
                [context[:, : self.slot], features[:, None], context[:, self.slot + 1 :]], dim=1
            )
            mask = self.view_mask
            if mask is None:
                mask = torch.ones(context.shape[:2], dtype=torch.bool)
            image_mask = mask.to(features.device).bool().expand(batch, -1).clone()
            image_mask[:, self.slot] = True
        text = text_mask = None
        if "text" in self.head.modalities and self.text is not None:
            text = self.text.to(features).expand(batch, -1)
            if self.text_mask is not None:
                text_mask = self.text_mask.to(features.device).bool().expand(batch)
        return self.head(image, image_mask, text, text_mask)

    @property
    def cam_layer(self) -> nn.Module:
        """The layer the CAM hooks (see :func:`cam_target_layer`)."""
        if isinstance(self.encoder, ViTEncoder):
            return cam_target_layer(self.encoder)
        return self.feature_map


# ----------------------------------------------------------------------------- encoder quirks


def cam_target_layer(encoder: ImageEncoder) -> nn.Module:
    """The layer inside an encoder that a CAM of it hooks: ``encoder.target_layer``, except for
    a ViT. (:class:`FusedImageClassifier` hooks CNNs after ``forward_features``, see its
    ``cam_layer``; for a ViT it uses this.)

    A ViT's pooled output is the class token after the final LayerNorm, which acts per token,
    so at the output of the last block the patch tokens get no gradient and every gradient map
    is zero. The input norm of the last block (``ln_1``), where attention mixes the tokens, is
    the layer the pytorch-grad-cam ViT tutorial hooks.
    """
    if isinstance(encoder, ViTEncoder):
        return encoder.backbone.encoder.layers[-1].ln_1
    return encoder.target_layer


def reshape_transform(encoder: ImageEncoder) -> Any:
    """Token -> map reshape for a ViT (class token dropped), None for CNNs."""
    return encoder.tokens_to_map if isinstance(encoder, ViTEncoder) else None


@contextmanager
def non_inplace_relu(module: nn.Module) -> Iterator[None]:
    """Switch every ``nn.ReLU``/``nn.ReLU6`` of ``module`` to out-of-place while in the block.

    In-place activations (torchxrayvision's DenseNet, torchvision ResNets) may overwrite a
    hooked activation or the tensor a gradient hook sits on; the original flags come back after.
    """
    changed = [m for m in module.modules() if isinstance(m, nn.ReLU | nn.ReLU6) and m.inplace]
    for m in changed:
        m.inplace = False
    try:
        yield
    finally:
        for m in changed:
            m.inplace = True


def label_target(labels: Sequence[str], label: str, output: OutputKind) -> ClassifierOutputTarget:
    """The CAM target of ``label``: its logit (sigmoid heads) or the positive logit (softmax)."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if label not in labels:
        raise CxrfuseError(f"label {label!r} is not one of this model's labels: {list(labels)}")
    if output == "softmax":
        if len(labels) != 1:
            raise CxrfuseError("a softmax head is binary: it has one label")
        return ClassifierOutputTarget(1)
    return ClassifierOutputTarget(list(labels).index(label))


def positive_probability(logits: torch.Tensor, index: int, output: OutputKind) -> torch.Tensor:
    """P(label positive) from logits: sigmoid of logit ``index`` or softmax class 1."""
    if output == "softmax":
        return torch.softmax(logits, dim=-1)[:, 1]
    return torch.sigmoid(logits[:, index])


@dataclass
class CamResult:
    """Maps in [0, 1] at the input resolution (B, H, W) and the feature grid they came from.

    ``maps`` are pytorch-grad-cam's output, min-max scaled per image (the shape of the map
    only); ``raw`` (B, H, W) are the same maps before that scaling (ReLU'd, in the method's
    own units), the values a fixed colour scale and the flat-map check read. ``raw`` is None
    for methods that bypass the per-layer CAM (none of :data:`CAM_METHODS` does)."""

    maps: np.ndarray
    grid: tuple[int, int]
    raw: np.ndarray | None = None


def compute_cam(
    model: FusedImageClassifier,
    inputs: torch.Tensor,
    target: Callable[[torch.Tensor], torch.Tensor],
    method: str = "gradcam",
    **cam_options: Any,
) -> CamResult:
    """Class activation maps of ``inputs`` (B, C, H, W) for ``target`` through ``model``.

    ``target`` maps the logits of one input to the score to explain (:func:`label_target`).

    Hooks are attached for this call only (pytorch-grad-cam's context manager releases them).
    ``cam_options`` go to the CAM class; ``batch_size`` sets how many perturbed copies
    Score-CAM / Ablation-CAM run at once.
    """
    cls = cam_class(method)
    encoder = model.encoder
    batch_size = cam_options.pop("batch_size", None)
    options: dict[str, Any] = {"reshape_transform": reshape_transform(encoder), **cam_options}
    if cls.__name__ == "AblationCAM" and isinstance(encoder, ViTEncoder):
        from pytorch_grad_cam.ablation_layer import AblationLayerVit

        options.setdefault("ablation_layer", AblationLayerVit())
    maps: np.ndarray | None = None
    grid: tuple[int, ...] = ()
    raw: list[np.ndarray] = []
    with (
        non_inplace_relu(model),
        cls(model=model, target_layers=[model.cam_layer], **options) as cam,
    ):
        if batch_size is not None:
            cam.batch_size = int(batch_size)
        per_layer = cam.get_cam_image

        def keep_raw(*args: Any, **kwargs: Any) -> np.ndarray:
            out = per_layer(*args, **kwargs)
            raw.append(np.maximum(np.asarray(out, dtype=np.float32), 0.0))
            return out

        cam.get_cam_image = keep_raw  # type: ignore[method-assign]
        maps = cam(input_tensor=inputs, targets=[target] * inputs.shape[0])
        activations = cam.activations_and_grads.activations
        grid = tuple(activations[-1].shape[-2:]) if activations else tuple(maps.shape[-2:])
    if maps is None or maps.shape[0] != inputs.shape[0]:  # the context manager swallows IndexError
        raise CxrfuseError(f"{method} failed on a batch of shape {tuple(inputs.shape)}")
    maps = np.asarray(maps, dtype=np.float32)
    raw_maps = None
    if len(raw) == 1 and raw[0].shape[0] == maps.shape[0]:  # one target layer, one batch
        import cv2

        size = (maps.shape[2], maps.shape[1])
        raw_maps = np.stack([cv2.resize(r, size, interpolation=cv2.INTER_LINEAR)
                             for r in raw[0]])  # as pytorch-grad-cam resizes its maps
    return CamResult(maps, (int(grid[0]), int(grid[1])), raw_maps)
