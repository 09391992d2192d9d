"""One name per op across every layer (docs/design.md, "Layout and naming").

Every public function in symnmf_kernels.ops.__all__ is defined in ops/<op>.py,
and that op has: its kernel, triton/<op>.py or csrc/cpu/<op>_cpu.cpp (the C++
SpMM, the CPU-only stopping measure); its test file tests/test_<op>.py; a bench entry <op>; and the function
has a twin of the same name in symnmf_kernels.reference.

A bench entry <op> is any of: a file bench/bench_<op>.py, a function bench_<op>
or <op> in a bench/*.py file, or the string "<op>" in a module-level KERNELS
tuple or list of a bench/*.py file (the kernel column of its table).
"""
import ast
import os

import pytest

import symnmf_kernels as sk
from symnmf_kernels import ops, reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Ops whose bench entry is not there yet, to be emptied as the entries land. The test fails for an op
# listed here that has an entry (so the list never goes stale) and for any op missing one that is not.
KNOWN_MISSING_BENCH = set()


def op_of(name):
    """The op (module of symnmf_kernels.ops) that defines the public function `name`."""
    module = getattr(ops, name).__module__
    assert module.startswith("symnmf_kernels.ops."), f"{name} is defined in {module}, not in an ops/<op>.py"
    return module.rsplit(".", 1)[1]


OPS = sorted({op_of(name) for name in ops.__all__})


def bench_entries():
    """The names bench/*.py offers as entries (see the module docstring)."""
    names = set()
    bench = os.path.join(ROOT, "bench")
    for file in sorted(os.listdir(bench)):
        if not file.endswith(".py"):
            continue
        stem = file[:-3]
        names.add(stem.removeprefix("bench_"))
        tree = ast.parse(open(os.path.join(bench, file)).read())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names.update({node.name, node.name.removeprefix("bench_")})
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "KERNELS" for t in node.targets):
                if isinstance(node.value, (ast.Tuple, ast.List)):
                    names.update(e.value for e in node.value.elts if isinstance(e, ast.Constant))
    return names


def test_public_names_are_the_ops():
    assert list(sk.__all__) == [*ops.__all__, "reference", "dot_precision", "get_dot_precision", "set_dot_precision",
                                "empty_host_cache", "host_cache_bytes", "set_host_cache_limit"]
    assert len(set(ops.__all__)) == len(ops.__all__)
    for name in ops.__all__:
        assert callable(getattr(sk, name)), name


@pytest.mark.parametrize("name", ops.__all__)
def test_every_public_function_has_a_reference_twin(name):
    assert callable(getattr(reference, name, None)), f"symnmf_kernels.reference has no {name}"


@pytest.mark.parametrize("op", OPS)
def test_every_op_has_its_kernel_and_test(op):
    kernels = [os.path.join("symnmf_kernels", "triton", f"{op}.py"), os.path.join("csrc", "cpu", f"{op}_cpu.cpp")]
    assert any(os.path.isfile(os.path.join(ROOT, k)) for k in kernels), f"{op} has no kernel ({' or '.join(kernels)})"
    test = os.path.join("tests", f"test_{op}.py")
    assert os.path.isfile(os.path.join(ROOT, test)), f"{op} has no test file {test}"


def test_every_op_has_a_bench_entry():
    entries = bench_entries()
    missing = sorted(op for op in OPS if op not in entries)
    unexpected = sorted(set(missing) - KNOWN_MISSING_BENCH)
    assert not unexpected, f"ops without a bench entry: {unexpected}"
    stale = sorted(KNOWN_MISSING_BENCH - set(missing))
    assert not stale, f"KNOWN_MISSING_BENCH lists ops that now have a bench entry (remove them): {stale}"


def test_every_kernel_file_belongs_to_an_op():
    """No kernel module under a name that is not an op (shared helpers live in triton/_common.py)."""
    triton_dir = os.path.join(ROOT, "symnmf_kernels", "triton")
    names = {f[:-3] for f in os.listdir(triton_dir) if f.endswith(".py") and not f.startswith("_")}
    assert names <= set(OPS), f"triton/ modules that are no op: {sorted(names - set(OPS))}"
    op_files = {f[:-3] for f in os.listdir(os.path.join(ROOT, "symnmf_kernels", "ops")) if f.endswith(".py")
                and not f.startswith("_")}
    assert op_files == set(OPS), f"ops/ modules without a public op in ops.__all__: {sorted(op_files - set(OPS))}"


def test_citations_point_to_the_design_notes():
    """Code and docs cite the project's own notes, docs/design.md, and only sections it has."""
    import re
    import subprocess

    notes = open(os.path.join(ROOT, "docs", "design.md")).read()
    sections = set(re.findall(r"^## (.+)$", notes, flags=re.M))
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    brief = "DESIGN" + ".md"  # the brief the notes started from, which is not part of the project
    bad = []
    for path in files:
        if not path.endswith((".py", ".md", ".cpp", ".cu", ".cuh", ".h", ".toml", ".sh", ".txt")):
            continue
        if not os.path.isfile(os.path.join(ROOT, path)):
            continue
        text = open(os.path.join(ROOT, path), errors="replace").read()
        if brief in text:
            bad.append(f"{path}: cites {brief}; cite docs/design.md")
        for cited in re.findall(r"docs/design\.md, [\"']([^\"']+)[\"']", text):
            if cited not in sections:
                bad.append(f"{path}: cites a section {cited!r} that docs/design.md does not have")
    assert not bad, "\n".join(bad)


def test_every_cpu_kernel_file_belongs_to_an_op():
    """csrc/cpu/<op>_cpu.cpp, and a schema csrc/<op>.cpp beside it, for an op of that name."""
    cpu_dir = os.path.join(ROOT, "csrc", "cpu")
    names = {f[: -len("_cpu.cpp")] for f in os.listdir(cpu_dir) if f.endswith("_cpu.cpp")}
    assert names and names <= set(OPS), f"csrc/cpu/ kernels that are no op: {sorted(names - set(OPS))}"
    for name in names:
        assert os.path.isfile(os.path.join(ROOT, "csrc", f"{name}.cpp")), f"csrc/cpu/{name}_cpu.cpp has no schema"
