"""autodrop: automatic learning-rate drops for PyTorch."""

__all__: list[str] = []
