import numpy as np
import pytest
import torch
from facetrain.pipeline.data.transforms import normalize_batch, to_tensor
from facetrain.pipeline.models import available_backbones, build_backbone
from PIL import Image


@pytest.mark.parametrize("name", ["tiny", "mobilefacenet", "iresnet18"])
def test_backbone_maps_faces_to_embeddings_without_final_relu(name):
    torch.manual_seed(0)
    net = build_backbone(name, embedding_size=24).train()
    images = torch.rand(4, 3, 112, 112) * 2 - 1
    embeddings = net(images)
    assert embeddings.shape == (4, 24)
    # A trailing ReLU would make every coordinate >= 0; BatchNorm output is centred.
    assert (embeddings < 0).any()
    embeddings.sum().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_iresnet_depths_match_the_published_sizes():
    # insightface arcface_torch: r50 at 512-d holds 43.6M parameters (IR blocks 3-4-14-3).
    net = build_backbone("iresnet50", embedding_size=512)
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(43.6e6, rel=0.01)
    assert {"iresnet18", "iresnet34", "iresnet50", "iresnet100", "mobilefacenet", "tiny"} <= set(
        available_backbones()
    )


def test_unknown_backbone_names_the_choices():
    with pytest.raises(ValueError, match="model.backbone 'resnet9000'.*iresnet50"):
        build_backbone("resnet9000", 128)


def test_to_tensor_is_rgb_chw_in_minus_one_one():
    pixels = np.zeros((112, 112, 3), dtype=np.uint8)
    pixels[..., 0] = 255  # red
    pixels[0, 0] = (0, 127, 255)
    tensor = to_tensor(Image.fromarray(pixels))
    assert tensor.shape == (3, 112, 112) and tensor.dtype == torch.float32
    assert tensor[0, 5, 5] == 1.0 and tensor[1, 5, 5] == -1.0
    np.testing.assert_allclose(
        tensor[:, 0, 0].numpy(), np.array([0, 127, 255]) / 127.5 - 1, atol=1e-6
    )
    batch = normalize_batch(torch.from_numpy(np.stack([pixels, pixels])))
    assert torch.equal(batch[1], tensor)


def _encoded(pixels, fmt, mode="RGB"):
    import io

    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, fmt)
    return buffer.getvalue()


def test_decode_matches_pil_for_every_path():
    from facetrain.pipeline.data.transforms import decode_rgb

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (112, 96, 3), dtype=np.uint8)
    for fmt, mode in [
        ("JPEG", "RGB"),
        ("JPEG", "L"),
        ("JPEG", "CMYK"),
        ("PNG", "RGB"),
        ("PNG", "RGBA"),
    ]:
        data = _encoded(pixels, fmt, mode)
        import io

        reference = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        decoded = decode_rgb(data)
        assert decoded.shape == (112, 96, 3) and np.array_equal(decoded, reference), (fmt, mode)
        out = np.zeros((112, 96, 3), dtype=np.uint8)
        assert decode_rgb(data, out=out) is not None and np.array_equal(out, reference)
    with pytest.raises(ValueError, match="sample k: image is 96x112, expected 112x112"):
        decode_rgb(
            _encoded(pixels, "JPEG"), where="sample k", out=np.zeros((112, 112, 3), np.uint8)
        )
    with pytest.raises(ValueError, match="sample z: cannot decode"):
        decode_rgb(b"not an image", where="sample z")
