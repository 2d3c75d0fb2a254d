"""The package's layering (docs/architecture.md): every import, at module level or inside a function, points
to a lower layer; module and function sizes stay within the project's limits."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "spikingjelly_vae"

# bottom to top; a unit is a top-level module or subpackage of spikingjelly_vae
LAYERS = (
    ("atomic", "surrogate", "runtime", "dataspec",    # plumbing with no package imports
     "schemas", "overwrite"),
    ("registry",),                                     # names -> neurons, model builders, weights
    ("functional",),                                   # the papers' equations
    ("kernels",),                                      # LIF / Poisson / tdBN+LIF: torch twins and CUDA
    ("neuron",),                                       # PaperLIFNode, PoissonLatent
    ("layer",),                                        # tdBN, temporal blocks, readout
    ("models",),                                       # ESVAE, FSVAE, ANN VAE, FAD autoencoders
    ("checkpoint", "download"),                        # files in, dataset files fetched
    ("data",),                                         # datasets in
    ("presets", "resident_data", "prior"),
    ("metrics", "train", "convert"),
    ("experiments", "inference"),
    ("reproduce",),
    ("pretrained",),
    ("cli",),
)
LEVEL = {unit: i for i, units in enumerate(LAYERS) for unit in units}
# upward imports that are allowed, each inside a function and for a reason:
ALLOWED_UP = {}


def _unit(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def _imports(path: Path):
    pkg = path.relative_to(PACKAGE).parent.parts
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(pkg)[: len(pkg) - node.level + 1]
            if node.module:
                yield (base + node.module.split("."))[:1]
            else:
                for alias in node.names:
                    yield (base + [alias.name])[:1]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("spikingjelly_vae."):
            yield [node.module.split(".")[1]]


def test_every_import_points_down():
    seen, wrong = set(), []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "__init__.py" and path.parent == PACKAGE:
            continue  # the package root re-exports the public names
        unit = _unit(path)
        assert unit in LEVEL, f"{unit} is not in a layer of tests/test_architecture.py (and docs/architecture.md)"
        for (dep,) in _imports(path):
            if dep == unit or dep.startswith("__"):  # the unit itself; `from .. import __version__`
                continue
            seen.add((unit, dep))
            if LEVEL[dep] >= LEVEL[unit] and (unit, dep) not in ALLOWED_UP:
                wrong.append(f"{path.relative_to(PACKAGE)} imports {dep} (layer {LEVEL[dep]} >= {LEVEL[unit]})")
    assert not wrong, "\n".join(wrong)
    assert set(ALLOWED_UP) <= seen, "an allowed upward import is gone: drop it from ALLOWED_UP"
    assert ("layer", "models") not in seen and ("neuron", "models") not in seen


def test_module_and_function_sizes():
    """No module over 400 lines; no function over 60 lines (kernel source strings are not functions)."""
    big = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        if len(text.splitlines()) > 400:
            big.append(f"{path.relative_to(PACKAGE)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 60:
                    big.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}: {length} lines")
    assert not big, "\n".join(big)


def test_presets_and_models_build_without_the_image_stack():
    """presets, the dataset table and the models import neither PIL nor torchvision (a model builds without
    the image stack), in a fresh interpreter."""
    import subprocess
    import sys
    code = ("import sys, spikingjelly_vae.presets, spikingjelly_vae.dataspec, spikingjelly_vae.models\n"
            "spikingjelly_vae.models.build_model({'model': 'esvae', 'in_channels': 1, 'image_size': 32, "
            "'latent_dim': 8, 'hidden': [4, 4, 8, 8]})\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'PIL', 'torchvision'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_no_private_torch_api():
    """No torch._*, torch.ops.aten._* or private torch.nn classes: the package runs on any torch >= 2.6."""
    import re
    private = re.compile(r"\btorch\.(?:[a-z_]+\.)*_[A-Za-z]|\bnn\.modules\.|\bF\._[a-z]")
    found = [f"{path.relative_to(PACKAGE)}:{n}: {line.strip()}" for path in sorted(PACKAGE.rglob("*.py"))
             for n, line in enumerate(path.read_text().splitlines(), 1) if private.search(line)]
    assert found == []
