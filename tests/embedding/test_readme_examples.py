"""The README shows the minimal C and Cython extensions verbatim: the files test_examples.py builds and runs."""
import os

import embed_build

README = os.path.join(os.path.dirname(__file__), "..", "..", "README.md")


def test_readme_shows_the_tested_extension_sources():
    with open(README) as f:
        readme = f.read()
    for name in ("example_bn.c", "example_bn_cy.pyx"):
        with open(os.path.join(embed_build.EXT_DIR, name)) as f:
            source = f.read().rstrip("\n")
        assert source in readme, f"README.md does not show {name} as tested"
