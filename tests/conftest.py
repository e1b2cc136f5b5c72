"""Shared fixtures. Shared plain helpers (require, MICRO, micro_model, ...) are in helpers.py."""
import pytest

from helpers import REQUIRE_REFERENCE, require
from tinygrad_gpt import kernels
from tinygrad_gpt.kernels import reference


@pytest.fixture(params=["numpy", "numba"])
def backend(request):
    """Run the test once per kernel backend (kernels/reference.py, kernels/numba_cpu.py),
    restoring the previous one after; "numba" skips if numba_cpu does not import."""
    if request.param == "numba":
        require("numba")
        try:
            from tinygrad_gpt.kernels import numba_cpu  # noqa: F401
        except Exception as e:                       # noqa: BLE001 (any import failure)
            message = f"kernels/numba_cpu.py does not import: {type(e).__name__}: {e}"
            if REQUIRE_REFERENCE:
                pytest.fail(message, pytrace=False)
            pytest.skip(message)
    with kernels.use(request.param):
        yield request.param


@pytest.fixture
def numpy_kernels():
    """The plain-NumPy kernels (reference.py) active for the test, the previous backend after.
    For monkeypatching reference.py (that only matters while it is active) and for thousands
    of tiny forwards (a gradient check), where numba's per-call cost dominates."""
    with kernels.use("numpy"):
        yield reference
