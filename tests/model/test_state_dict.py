"""The state dict is public API: the official checkpoints must load strictly, and bad files must
fail with messages that say what is wrong."""

import pytest
import torch

import mambaic
from mambaic.checkpoint import config_from_state_dict, state_dict_mismatch

from .conftest import TINY

# Sizes of the entropy coder's buffers in a trained, update()d checkpoint: they differ from a
# fresh model's (empty) ones and must be resized on load.
TRAINED_BUFFERS = {
    "entropy_bottleneck._offset": (192,),
    "entropy_bottleneck._quantized_cdf": (192, 37),
    "entropy_bottleneck._cdf_length": (192,),
    "gaussian_conditional._offset": (64,),
    "gaussian_conditional._quantized_cdf": (64, 3133),
    "gaussian_conditional._cdf_length": (64,),
    "gaussian_conditional.scale_table": (64,),
}


@pytest.fixture(scope="module")
def full_model():
    """The official default configuration, built but never run (123.8 M parameters)."""
    return mambaic.MambaIC()


def test_keys_and_shapes_are_the_official_ones(full_model, official_shapes):
    ours = {k: list(v.shape) for k, v in full_model.state_dict().items()}
    missing = sorted(set(official_shapes) - set(ours))
    unexpected = sorted(set(ours) - set(official_shapes))
    assert not missing and not unexpected, f"missing {missing[:5]}, unexpected {unexpected[:5]}"
    shapes = {k: (ours[k], v) for k, v in official_shapes.items() if ours[k] != v}
    assert not shapes, f"shape mismatches (ours, official): {dict(list(shapes.items())[:5])}"


def test_strict_load_of_an_official_dict(full_model, official_shapes):
    state = {k: torch.full(v, 0.5) for k, v in official_shapes.items()}
    for k, shape in TRAINED_BUFFERS.items():
        state[k] = torch.ones(shape, dtype=torch.int32 if "scale_table" not in k else torch.float32)
    full_model.load_state_dict(state, strict=True)
    for k, shape in TRAINED_BUFFERS.items():
        assert tuple(full_model.state_dict()[k].shape) == shape, k
    # the context models are registered twice (official layout): both names are one module
    assert full_model.context_vss_1 is full_model.context_vss[0]
    assert config_from_state_dict(state) == full_model.config


@pytest.mark.parametrize(
    "config",
    [
        pytest.param(TINY, id="tiny"),
        pytest.param(dict(N=8, M=30, depths=(0, 1, 2, 1), num_slices=3, z_channels=8), id="3-slices"),
        pytest.param(dict(N=8, M=20, depths=(1, 1, 1, 1), max_support_slices=2, z_channels=8), id="support-2"),
    ],
)
def test_config_is_read_off_the_state_dict(config):
    model = mambaic.MambaIC(**config)
    inferred = config_from_state_dict(model.state_dict())
    assert inferred == model.config
    assert state_dict_mismatch(mambaic.MambaIC(**inferred), model.state_dict()) is None


@pytest.mark.parametrize("wrapped", [True, False], ids=["official-file", "bare-state-dict"])
def test_load_checkpoint_accepts_official_files(tmp_path, tiny, wrapped):
    state = {f"module.{k}": v for k, v in tiny.state_dict().items()}  # saved from DataParallel
    obj = {"epoch": 3, "state_dict": state, "loss": 0.5} if wrapped else state
    torch.save(obj, tmp_path / "ckpt.pth.tar")
    model = mambaic.load_checkpoint(tmp_path / "ckpt.pth.tar")
    assert not model.training
    for (k, a), b in zip(tiny.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), k


def test_wrong_state_dict_names_first_keys_and_shapes(tiny):
    state = dict(tiny.state_dict())
    del state["g_a.0.bias"]
    state["g_a.99.weight"] = torch.zeros(1)
    state["h_a.0.weight"] = torch.zeros(3, 3)
    model = mambaic.MambaIC(**TINY)
    with pytest.raises(ValueError) as info:
        model.load_state_dict(state)
    msg = str(info.value)
    assert "1 missing keys (g_a.0.bias)" in msg
    assert "1 unexpected keys (g_a.99.weight)" in msg
    assert "h_a.0.weight has shape (3, 3), the model (16, 20, 3, 3)" in msg


def test_bad_checkpoint_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        mambaic.load_checkpoint(tmp_path / "absent.pth.tar")
    (tmp_path / "text.pth.tar").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="text.pth.tar: not a PyTorch checkpoint"):
        mambaic.load_checkpoint(tmp_path / "text.pth.tar")
    torch.save({"state_dict": {"conv.weight": torch.zeros(1)}}, tmp_path / "other.pth.tar")
    with pytest.raises(ValueError, match=r"other.pth.tar: not a MambaIC state dict: key 'g_a.0.weight' is missing"):
        mambaic.load_checkpoint(tmp_path / "other.pth.tar")
    torch.save([1, 2], tmp_path / "list.pth.tar")
    with pytest.raises(ValueError, match="expected a state dict"):
        mambaic.load_checkpoint(tmp_path / "list.pth.tar")


def test_constants_are_not_saved(tiny):
    """Index tables and masks of the attention live in the kernels; only the checkerboard
    masks (official keys) are buffers of ours in the state dict."""
    ours = [k for k, _ in tiny.named_buffers() if not k.startswith(("entropy_bottleneck", "gaussian_conditional"))]
    assert ours and all(k.startswith("context_prediction.") and k.endswith(".mask") for k in ours), ours
