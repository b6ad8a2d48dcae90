"""Deep Image Prior network and training loop (completion/dip.py, models/dip.py)."""
import numpy as np
import pytest
import torch
from torch import nn

from completion.dip import dip_inpaint
from completion.image_grid import pad_to_multiple
from models.device import MemoryBudgetError
from models.cntk import Concat, Conv, Sequential, parse_spec, skip_spec
from models.dip import DIPConfig, DIPNetwork, dip_spec

TINY = DIPConfig(input_channels=8, scales=2, down=16, up=16, skip=4)


@pytest.fixture(autouse=True)
def one_thread():
    """These networks are too small to gain from threads; on a busy machine two threads
    contending for cores make each step several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def smooth_image(h, w, channels=None, seed=0):
    """A smooth random image in [0.1, 0.9] (sum of a few low-frequency cosines)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    planes = []
    for _ in range(channels or 1):
        f = sum(rng.uniform(-1, 1) * np.cos(2 * np.pi * (rng.integers(0, 3) * x + rng.integers(0, 3) * y)
                                            + rng.uniform(0, 6)) for _ in range(4))
        planes.append(0.5 + 0.4 * f / 4)
    img = np.stack(planes, -1)
    return img[:, :, 0] if channels is None else img


def observed_mse(result_output, image, mask):
    diff = (np.asarray(result_output) - image) ** 2
    return float(diff[~mask].mean())


def published_parameter_count(out_channels, c0=32, width=128, skip=4, scales=5, k=3):
    """Closed form: conv weights + biases, batch-norm weight + bias, per level, plus the head."""
    def conv(ci, co, ks):
        return ci * co * ks * ks + co

    def bn(c):
        return 2 * c

    total, c_in = 0, c0
    for level in range(scales):
        inner = width  # the deeper level's up channels, or this level's down channels at the bottom
        total += conv(c_in, skip, 1) + bn(skip)
        total += conv(c_in, width, k) + bn(width) + conv(width, width, k) + bn(width)
        total += bn(skip + inner)
        total += conv(skip + inner, width, k) + bn(width) + conv(width, width, 1) + bn(width)
        c_in = width
    return total + conv(width, out_channels, 1)


def test_published_configuration_matches_closed_form_and_layer_list():
    net = DIPNetwork(3)
    assert net.parameter_count() == published_parameter_count(3)
    assert 2_000_000 < net.parameter_count() < 3_000_000
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 5 * 5 + 1  # per level: skip 1x1, two down 3x3, merge 3x3 and 1x1; head
    assert sorted({m.kernel_size[0] for m in convs}) == [1, 3]
    assert sum(m.stride == (2, 2) for m in convs) == 5
    assert all(m.bias is not None for m in convs)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 5 * 6
    ups = [m for m in net.modules() if isinstance(m, nn.Upsample)]
    assert len(ups) == 5 and all(m.mode == "bilinear" for m in ups)
    assert all(m.negative_slope == 0.2 for m in net.modules() if isinstance(m, nn.LeakyReLU))
    assert isinstance(list(net.modules())[-1], nn.Sigmoid)
    # every 3x3 convolution is reflection padded by 1
    pads = [m for m in net.modules() if isinstance(m, nn.ReflectionPad2d)]
    assert len(pads) == sum(m.kernel_size[0] == 3 for m in convs)
    z = net.noise_input(32, 32, generator=torch.Generator().manual_seed(0))
    assert z.shape == (1, 32, 32, 32) and 0 <= z.min() and z.max() <= 0.1 and z.max() > 0.09


def test_network_is_built_from_the_cntk_skip_spec():
    """One shape definition: the DIP convolutions are those of the CNTK spec (dip_spec = the
    ``skip_spec`` list), in order, less the spec's first Conv (which stands for the input)."""
    for config in (DIPConfig(), TINY, DIPConfig(input_channels=4, scales=3, down=8, up=8, skip=2,
                                                  kernel_size=5)):
        spec = dip_spec(config)
        Sequential.from_spec(spec)  # a valid CNTK network: the kernel of the same shape
        convs = [m for m in DIPNetwork(1, config).modules() if isinstance(m, nn.Conv2d)]
        spec_convs = [x for x in _flatten(parse_spec(spec)) if isinstance(x, Conv)]
        assert [m.kernel_size[0] for m in convs] == [x.k for x in spec_convs[1:]]
    assert dip_spec(DIPConfig()) == skip_spec(5, 4 / 132, 3, "L0.2", "Ub")


def _flatten(layers):
    for layer in layers:
        if isinstance(layer, Concat):
            yield from _flatten(layer.skip)
            yield from _flatten(layer.main)
        else:
            yield layer


def test_fixed_seed_output_is_unchanged(test_data):
    """The tiny network's output for a fixed seed, stored before the network was rebuilt from
    the skip spec (tests/data/README.md)."""
    torch.manual_seed(0)
    net = DIPNetwork(1, TINY)
    z = net.noise_input(16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = net(z).numpy()
    np.testing.assert_allclose(out, np.load(test_data / "dip_tiny_output_seed0.npy"), rtol=1e-5)


def test_published_configuration_trains_two_steps_on_64x64():
    img = smooth_image(64, 64, channels=3)
    mask = np.random.default_rng(0).random((64, 64)) < 0.5
    res = dip_inpaint(img, mask, iterations=2, reference=img, log_every=1, progress=False,
                      device="cpu")
    assert res.image.shape == img.shape and res.output.shape == img.shape
    assert [p.iteration for p in res.history] == [1, 2]
    assert np.isfinite(res.output).all() and 0 <= res.output.min() and res.output.max() <= 1
    assert res.psnr is not None and res.psnr_output is not None


def test_tiny_network_overfits_observed_pixels():
    img = smooth_image(16, 16, seed=1) + 0.05 * np.random.default_rng(2).standard_normal((16, 16))
    img = np.clip(img, 0, 1)
    mask = np.random.default_rng(3).random((16, 16)) < 0.5
    res = dip_inpaint(img, mask, iterations=300, config=TINY, reg_noise_std=0.0, log_every=1,
                      progress=False, device="cpu", paste_observed=False)
    first = res.history[0].loss
    assert observed_mse(res.output, img, mask) < first / 30


def test_same_seed_same_output_other_seed_differs():
    img = smooth_image(16, 16, channels=3)
    mask = np.random.default_rng(0).random((16, 16)) < 0.3
    kw = dict(iterations=5, config=TINY, progress=False, device="cpu")
    a, b = dip_inpaint(img, mask, seed=4, **kw), dip_inpaint(img, mask, seed=4, **kw)
    c = dip_inpaint(img, mask, seed=5, **kw)
    np.testing.assert_array_equal(a.output, b.output)
    assert [p.loss for p in a.history] == [p.loss for p in b.history]
    assert np.abs(a.output - c.output).max() > 1e-4
    assert not torch.are_deterministic_algorithms_enabled()  # global switch restored


def test_odd_sizes_are_padded_and_cropped_and_observed_pixels_pasted():
    img = smooth_image(13, 19, channels=3)
    mask = np.random.default_rng(1).random((13, 19)) < 0.5
    res = dip_inpaint(img, mask, iterations=3, config=TINY, progress=False, device="cpu")
    assert res.image.shape == (13, 19, 3) and res.output.shape == (13, 19, 3)
    np.testing.assert_array_equal(res.image[~mask], img[~mask])
    np.testing.assert_array_equal(res.image[mask], res.output[mask])
    assert np.abs(res.output - img)[~mask].max() > 1e-3  # raw output is the network's
    grey = dip_inpaint(img[:, :, 0], mask, iterations=2, config=TINY, progress=False, device="cpu")
    assert grey.image.shape == (13, 19)
    np.testing.assert_array_equal(np.asarray(grey), grey.image)


def test_padding_reaches_twice_the_multiple_and_is_missing():
    # 5 x 6 with 2 scales (multiple 4): at least 2 x 4 per side so the bottom level keeps 2 x 2
    img = 0.4 + 0.2 * smooth_image(5, 6)
    mask = np.zeros((5, 6), bool)
    res = dip_inpaint(img, mask, iterations=1, config=TINY, progress=False, device="cpu")
    assert res.image.shape == (5, 6)
    padded, pmask = pad_to_multiple(img, mask, 4, minimum=8)
    assert padded.shape == (8, 8) and not pmask[:5, :6].any() and pmask[5:].all() and pmask[:, 6:].all()


def test_dip_rules_beyond_the_shared_ones():
    img = np.full((8, 8, 3), 0.5)
    per_channel = np.zeros((8, 8, 3), bool)
    per_channel[0, 0, 1] = True
    with pytest.raises(ValueError, match="one mask shared by all channels"):
        dip_inpaint(img, per_channel, iterations=1, config=TINY, progress=False)
    with pytest.raises(ValueError, match=r"\[0, 1\], got -0.5 to -0.5"):
        dip_inpaint(img - 1, per_channel[:, :, 0], iterations=1, config=TINY, progress=False)
    with pytest.raises(ValueError, match="at least 2 x 2"):
        dip_inpaint(img[:1], per_channel[:1, :, 0], iterations=1, config=TINY, progress=False)


def test_backtracking_restores_the_last_accepted_weights():
    # A nearly constant image is fitted well at once; a huge learning rate then saturates the
    # sigmoid, multiplying the loss far beyond the 5 dB (x 3.16) threshold.
    img = 0.5 + 0.02 * smooth_image(16, 16, seed=3)
    mask = np.random.default_rng(0).random((16, 16)) < 0.5
    kw = dict(iterations=25, config=TINY, lr=3.0, reg_noise_std=0.0, log_every=1, progress=False,
              device="cpu")
    res = dip_inpaint(img, mask, **kw)
    loss = {p.iteration: p.loss for p in res.history}
    assert res.backtracks
    for t in res.backtracks:
        accepted = max(i for i in range(1, t) if i not in res.backtracks)
        assert loss[t] > loss[accepted] * 10 ** 0.5  # the trigger, recomputed from the history
        if t + 1 <= 25:
            # without input noise, the restored weights reproduce the accepted forward exactly
            assert loss[t + 1] == loss[accepted]
    without = dip_inpaint(img, mask, backtrack=False, **kw)
    assert not without.backtracks
    assert max(p.loss for p in without.history) > max(p.loss for p in res.history
                                                      if p.iteration not in res.backtracks)


def test_bad_inputs_and_memory_refusal():
    img = smooth_image(16, 16)
    mask = np.zeros((16, 16), bool)
    with pytest.raises(ValueError, match="mask shape"):
        dip_inpaint(img, mask[:8], iterations=1, config=TINY, progress=False)
    with pytest.raises(ValueError, match="bool"):
        dip_inpaint(img, mask.astype(int), iterations=1, config=TINY, progress=False)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        dip_inpaint(img * 3, mask, iterations=1, config=TINY, progress=False)
    with pytest.raises(ValueError, match="iterations"):
        dip_inpaint(img, mask, iterations=0, config=TINY, progress=False)
    with pytest.raises(MemoryBudgetError, match="would need"):
        dip_inpaint(img, mask, iterations=1, progress=False, memory_budget="1KB")
    with pytest.raises(ValueError, match="multiples of 4"):
        DIPNetwork(1, TINY)(torch.zeros(1, 8, 6, 8))
    with pytest.raises(ValueError, match="skip"):
        DIPNetwork(1, DIPConfig(scales=2, skip=(4, 4, 4)))
