import pytest
import torch

from dvclust.nn import ConvVAE, block_sizes


@pytest.mark.parametrize("side", [8, 28, 32, 64, 128, 224])
@pytest.mark.parametrize("channels", [1, 3])
def test_reconstruction_has_input_size(side, channels):
    model = ConvVAE((channels, side, side), latent_dim=4, base_channels=4)
    x = torch.rand(2, channels, side, side)
    out, mu, logvar, z = model(x)
    assert out.shape == x.shape
    assert mu.shape == logvar.shape == z.shape == (2, 4)


@pytest.mark.parametrize("hw", [(28, 40), (9, 13), (100, 37), (256, 256), (15, 15)])
def test_odd_and_non_square_sizes(hw):
    model = ConvVAE((1, *hw), latent_dim=3, base_channels=4)
    assert model(torch.rand(1, 1, *hw))[0].shape == (1, 1, *hw)


def test_block_count_follows_size():
    assert len(block_sizes(28, 28)) - 1 == 2      # 28 -> 14 -> 7
    assert len(block_sizes(8, 8)) - 1 == 1        # 8 -> 4
    assert len(block_sizes(224, 224)) - 1 == 5    # ... -> 7


def test_eval_mode_is_deterministic():
    model = ConvVAE((1, 28, 28), latent_dim=4).eval()
    x = torch.rand(3, 1, 28, 28)
    out1, mu1, _, z1 = model(x)
    out2, _, _, _ = model(x)
    assert torch.equal(z1, mu1) and torch.equal(out1, out2)
