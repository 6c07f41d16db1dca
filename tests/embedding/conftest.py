"""The embedding tests' extensions, built once per session into a temporary directory."""
import os

import pytest

import embed_build



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
