"""Shared fixtures."""
import pytest

from tinygrad_gpt import kernels


@pytest.fixture(params=["numpy", "numba"])
def backend(request):
    """Run the test once per kernel backend (kernels/reference.py, kernels/numba_cpu.py),
    restoring the previous one after; "numba" skips if numba_cpu does not import."""
    if request.param == "numba":
        try:
            from tinygrad_gpt.kernels import numba_cpu  # noqa: F401
        except Exception as e:                       # noqa: BLE001 (any import failure)
            pytest.skip(f"kernels/numba_cpu.py does not import: {type(e).__name__}: {e}")
    with kernels.use(request.param):
        yield request.param
