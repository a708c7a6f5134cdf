import pytest
import torch

from autodrop import AngularVelocity
from autodrop.checks import check_choice, check_int, check_keys, check_real, check_tensors_like
from autodrop.detectors import PaperRule
from autodrop.trajectory import ParameterTrajectory


def test_messages_name_the_value_and_the_allowed_range():
    with pytest.raises(ValueError, match=r"rho must be a real number in \(0, 1\), got 2"):
        check_real("rho", 2, "(0, 1)")
    with pytest.raises(TypeError, match=r"rho must be a real number in \(0, 1\), got True"):
        check_real("rho", True, "(0, 1)")
    with pytest.raises(ValueError, match=r"k must be an int in \[1, 3\], got 4"):
        check_int("k", 4, 1, 3)
    with pytest.raises(ValueError, match=r"mode must be one of 'a', 'b', got 3"):
        check_choice("mode", 3, ("a", "b"))
    with pytest.raises(KeyError, match=r"lacks \['b'\]"):
        check_keys("state", {"a": 1}, ("a", "b"))
    with pytest.raises(KeyError, match=r"unexpected keys \['c'\]"):
        check_keys("state", {"a": 1, "b": 2, "c": 3}, ("a", "b"))


def test_tensor_lists_are_checked_for_length_type_shape_dtype_and_finiteness():
    like = [torch.zeros(2, 3)]
    check_tensors_like("t", [torch.ones(2, 3)], like)
    for bad, error, message in [
        ([], ValueError, "0 items, expected 1"),
        ([1.0], TypeError, r"t\[0\] must be a tensor"),
        ([torch.zeros(6)], ValueError, r"\(6,\) torch.float32, the current parameters need \(2, 3\)"),
        ([torch.zeros(2, 3, dtype=torch.float64)], ValueError, "torch.float64"),
        ([torch.full((2, 3), float("inf"))], ValueError, "NaN or Inf"),
    ]:
        with pytest.raises(error, match=message):
            check_tensors_like("t", bad, like)


def test_the_pieces_under_autodrop_check_their_arguments_too():
    with pytest.raises(ValueError, match=r"eps must be a real number in \(0, inf\)"):
        AngularVelocity([torch.zeros(2)], eps=0.0)
    with pytest.raises(ValueError, match="snapshot_device 'gpu0' is not a valid device"):
        ParameterTrajectory([torch.zeros(2)], snapshot_device="gpu0")
    for device in ("meta", "cuda:99", torch.device("cuda", 99)):
        with pytest.raises(ValueError, match="snapshot_device '(meta|cuda:99)'"):
            ParameterTrajectory([torch.zeros(2)], snapshot_device=device)
    with pytest.raises(ValueError, match="NaN or Inf"):
        ParameterTrajectory([torch.tensor([float("inf")])])
    with pytest.raises(ValueError, match=r"window must be an int in \[1, 10000\], got 0"):
        PaperRule(0.1, 1.0, window=0)
    with pytest.raises(ValueError, match=r"max_threshold must be a real number in \[0.1, inf\)"):
        PaperRule(0.1, 0.05)
