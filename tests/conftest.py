import os

import numpy as np
import pytest

os.environ.setdefault("GPUQUANT_NUM_THREADS", "2")


def _cuda_present() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


CUDA = _cuda_present()
# Without a GPU the Triton kernels run under the interpreter on torch CPU tensors. The
# variable must be set before gpuquant.kernels is first imported (triton.jit reads it).
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def one_line_error(capsys, argv, *words) -> str:
    """Run the CLI on ``argv``: exit 2 and one stderr line holding every one of ``words``."""
    from gpuquant.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err and all(w in err for w in words), (argv, err)
    return err


def codes_of(qt):
    """Unpacked integer codes of a QuantizedTensor, as int64 NumPy in the original shape."""
    import gpuquant as gq

    data = qt.data
    if hasattr(data, "detach"):
        data = data.detach().cpu().numpy()
    if qt.config.bits == 4:
        k = qt.shape[-1] if qt.shape else 1
        data = gq.unpack_int4(data, k, signed=qt.config.symmetric,
                              nibble_order=qt.config.nibble_order)
    return np.asarray(data).astype(np.int64).reshape(qt.shape)


def as_numpy(a):
    if hasattr(a, "detach"):
        import torch

        a = a.detach().cpu()
        if a.dtype == torch.bfloat16:
            a = a.float()
        return a.numpy()
    return np.asarray(a)


@pytest.fixture(scope="session", autouse=True)
def _temporary_folder_of_the_session(tmp_path_factory):
    """Processes the tests spawn (torchrun writes torchelastic_* log folders) use a temporary
    folder of this session, removed at its end: the suite leaves nothing in the system's."""
    import shutil

    folder = tmp_path_factory.mktemp("tmpdir")
    previous = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = previous
    shutil.rmtree(folder, ignore_errors=True)
