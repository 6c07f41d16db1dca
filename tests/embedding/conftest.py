"""The embedding tests' extensions, built once per session into a temporary directory."""
import os

import numpy as np
import pytest

import embed_build

CASES = {
    # name: (mode, dtype, (N, C, S), affine)
    "spatial-fp32": ("spatial", np.float32, (2, 3, 5), True),
    "spatial-fp16-vec": ("spatial", np.float16, (3, 2, 8), True),
    "per_activation-fp32": ("per_activation", np.float32, (5, 3, 2), True),
    "spatial-fp32-nonaffine": ("spatial", np.float32, (3, 4, 4), False),
    # big enough that the heuristic splits each statistic over CTAs: the caller's workspace is used
    "spatial-fp32-split": ("spatial", np.float32, (2, 1, 8192), True),
    "per_activation-fp32-split": ("per_activation", np.float32, (16384, 1, 1), True),
}
SPLIT_CASES = ("spatial-fp32-split", "per_activation-fp32-split")


@pytest.fixture(scope="session")
def build_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("embedding-ext"))


@pytest.fixture(scope="session")
def cext(build_dir):
    path = embed_build.compile_extension([os.path.join(embed_build.EXT_DIR, "bn_cext.c")], build_dir, "bn_cext")
    return embed_build.load("bn_cext", path)


@pytest.fixture(scope="session")
def cppext(build_dir):
    """The same source compiled as C++ (cybn.h's extern "C" guards and static_assert)."""
    path = embed_build.compile_extension([os.path.join(embed_build.EXT_DIR, "bn_cext.c")], build_dir,
                                         "bn_cext_cpp", cxx=True, defines=["BN_CEXT_NAME=bn_cext_cpp"])
    return embed_build.load("bn_cext_cpp", path)


@pytest.fixture(scope="session")
def cyext(build_dir):
    cpp = embed_build.cythonize(os.path.join(embed_build.EXT_DIR, "bn_cyext.pyx"), build_dir)
    # Cython's generated code is not -Wextra clean: strict flags only for our own C.
    path = embed_build.compile_extension([cpp], build_dir, "bn_cyext", cxx=True, strict=False)
    return embed_build.load("bn_cyext", path)
