"""The Triton mLSTM kernels compile for sm_90 and sm_80 without a GPU and spill no registers in any
dtype: `bench/gpu_check.py --aot` (triton's bundled ptxas, no device) exits 1 and names the kernel,
dtype and arch of every spill. About a minute on a cold triton cache, hence `slow`."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_aot_compiles_every_kernel_without_spills():
    triton = pytest.importorskip("triton")
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    if not os.path.exists(ptxas):
        pytest.skip("triton's bundled ptxas is absent")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.run([sys.executable, os.path.join(REPO, "bench", "gpu_check.py"), "--aot"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=1200)
    tail = "\n".join((p.stdout + p.stderr).splitlines()[-15:])
    assert p.returncode == 0, tail
    assert "0 configurations failed, 0 kernels spill" in p.stdout, tail
