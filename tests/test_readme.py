"""The README's Python examples run as written, each in a fresh process on the CPU (torch and the extension's
CPU kernels, as a user without a GPU runs them), and print what their comments say."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_examples():
    text = open(os.path.join(ROOT, "README.md")).read()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_has_its_two_examples():
    examples = readme_examples()
    assert len(examples) == 2
    assert "sk.symnmf_block" in examples[0] and "symnmf.SymNMF" in examples[1]


@pytest.mark.parametrize("index", [0, 1], ids=["kernels", "estimator"])
def test_readme_example_runs(index):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("TRITON_INTERPRET", None)  # a user's CPU run: the torch and C++ paths, not the interpreter
    proc = subprocess.run([sys.executable, "-c", readme_examples()[index]], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    out = proc.stdout.strip().splitlines()
    if index == 0:
        assert out == ["torch.Size([32, 32])"]  # as its comment says
    else:
        accuracy = float(out[-1])
        assert 0.5 < accuracy <= 1.0  # SymHALS on digits' kNN graph: 0.8 or so (README, docs)
