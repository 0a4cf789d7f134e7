"""Which packages the llmctl distribution holds; everything else is in pyproject.toml.

One import root, `llmctl`, with the design's components as folders at the repository root. Each folder holds
its portion of the `llmctl` namespace (PEP 420: no llmctl/__init__.py anywhere), e.g. kernels/llmctl/kernels/,
so no folder at the root is an importable package that could shadow another distribution's top-level name
(Hugging Face's `kernels`, which transformers imports) when the root is on sys.path. A wheel holds only llmctl/.
"""

from setuptools import find_namespace_packages, setup

COMPONENTS = ("kernels", "agent", "controlplane", "tui", "migrations")

packages: list[str] = []
package_dir: dict[str, str] = {}
for component in COMPONENTS:
    root = f"llmctl.{component}"
    package_dir[root] = f"{component}/llmctl/{component}"
    packages += find_namespace_packages(component, include=[root, f"{root}.*"], exclude=["*.__pycache__"])

setup(packages=packages, package_dir=package_dir)
