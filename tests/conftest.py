"""Shared test settings and the models the tests run.

The model fixtures: ``bundled_model`` (the bundled demo weights, as every adapter and the service
load them), ``tiny_model`` (random SAM2 Hiera-t at 64 px with a one-block fuser: fast),
``tiny_fused_model`` and ``tiny_refavs_model`` (the same with the fusion residuals switched on,
AVS and Ref-AVS). Tiny models are seeded and built once per test module, so what one module does
to its model never reaches another. The CVAT and FiftyOne tests keep their own ``model``
fixtures: theirs must be the instance those adapters' caches hand out. The CVAT function's
tests share ``emu`` (the CVAT emulator) and ``cvat_function_threads_joined``.
"""

import pytest
import torch

from auralsam2_core.model_spec import ModelSpec, load_model
from auralsam2_core.modeling.build import build_auralsam2
from auralsam2_core.modeling.text_encoder import tiny_random_text_encoder

TINY_SIZE = 64  # SAM2 input size: 16x16 / 8x8 / 4x4 FPN maps
TINY_FUSER = {"f_depths": [1, 1, 1]}  # one fusion block per stage


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Tests run many small ops on a shared 2-core machine: one intra-op thread avoids
    oversubscription (measured ~20x slower with several threads under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def bundled_model():
    """The bundled demo model from the process-wide cache the adapters and the service use."""
    return load_model(ModelSpec())


def _tiny(**kw):
    torch.manual_seed(0)
    return build_auralsam2("sam2_hiera_t", image_size=TINY_SIZE, fuser_config=TINY_FUSER,
                           device="cpu", **kw)


def _open_fusion(fuser) -> None:
    """The fusion BatchNorm scales start at zero (no attention residual); trained ones are not
    zero, so tests of the fusion path give them random values."""
    g = torch.Generator().manual_seed(1)
    for fm in fuser.fusion_modules:
        for bn in (fm.W_z[1], fm.W_z2[1]):
            bn.weight.data = torch.rand(bn.weight.shape, generator=g) + 0.5


@pytest.fixture(scope="module")
def tiny_model():
    """Random SAM2 Hiera-t (64 px) + one-block fuser, seeded 0, as built."""
    return _tiny()


@pytest.fixture(scope="module")
def tiny_fused_model():
    """``tiny_model`` with its fusion residuals switched on."""
    m = _tiny()
    _open_fusion(m.fuser)
    return m


@pytest.fixture(scope="module")
def tiny_refavs_model():
    """The Ref-AVS variant of ``tiny_fused_model`` with a tiny random text encoder."""
    m = _tiny(variant="refavs", text_encoder=tiny_random_text_encoder(seed=0))
    _open_fusion(m.fuser)
    return m


@pytest.fixture
def emu():
    """A CVAT emulator at its strictest, with the CVAT function's token; at the end, whatever
    a test uploaded must still open in CVAT's UI and export."""
    from helpers import cvat_emulator as ce
    from helpers.cvat_function_env import TOKEN

    server = ce.CvatEmulator(token=TOKEN)
    yield server
    server.close()
    server.check_ui_and_export()


@pytest.fixture
def cvat_function_threads_joined():
    """A CVAT function test ends only when the function's background threads have."""
    from helpers.cvat_function_env import join_function_threads

    yield
    join_function_threads()
