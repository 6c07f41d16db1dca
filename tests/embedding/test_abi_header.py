"""cybn/kernels/bn_abi.h is the one home of the constants the kernels, the Cython core and the C API share:
cybn/include/cybn.h's public constants must agree with it, and no kernel or Cython file keeps its own copy."""
import glob
import os
import re

import cybn
from cybn import paths

_DEFINE = re.compile(r"^[ \t]*#[ \t]*define[ \t]+([A-Z_][A-Z0-9_]*)[ \t]+([^\n]*)$", re.M)
_ARITH = re.compile(r"[0-9()+\-*<< ]+\Z")


def defines(path):
    """{name: int} of a header's object-like #defines with an integer value (comments removed)."""
    with open(path) as f:
        text = re.sub(r"/\*.*?\*/", " ", f.read(), flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    out = {}
    for name, value in _DEFINE.findall(text):
        value = value.strip()
        if value and _ARITH.match(value):
            out[name] = int(eval(value, {"__builtins__": {}}))  # digits, parentheses and + - * << only
    return out


ABI = defines(os.path.join(paths.kernel_dir(), "bn_abi.h"))
CAPI = defines(os.path.join(cybn.get_include(), "cybn.h"))
# cybn.h names that are not CYBN_ + the bn_abi.h name without BN_
RENAMED = {"CYBN_AFFINE": "BN_DESC_AFFINE", "CYBN_ACCUMULATE_GRADS": "BN_DESC_ACCUMULATE",
           "CYBN_BIASED_RUNNING_VAR": "BN_DESC_BIASED_RUNNING_VAR", "CYBN_FIX_GAMMA": "BN_DESC_FIX_GAMMA"}


def test_c_api_constants_agree_with_the_abi_header():
    pairs = {}
    for name, value in CAPI.items():
        twin = RENAMED.get(name, "BN_" + name[len("CYBN_"):])
        if twin in ABI:
            pairs[name] = (value, ABI[twin])
    # Every constant the descriptor, its flags and the status codes use is mirrored (not a vacuous pass).
    assert {"CYBN_SPATIAL", "CYBN_PER_ACTIVATION", "CYBN_FLOAT32", "CYBN_FLOAT16", "CYBN_AFFINE",
            "CYBN_ACCUMULATE_GRADS", "CYBN_OK", "CYBN_EINVAL", "CYBN_ENOTPREPARED", "CYBN_EWORKSPACE",
            # version 3 (issue 11): dtypes, layouts, activations, the biased-variance flag
            "CYBN_BFLOAT16", "CYBN_FLOAT64", "CYBN_LAYOUT_NCHW", "CYBN_LAYOUT_NHWC", "CYBN_BIASED_RUNNING_VAR",
            "CYBN_FIX_GAMMA",
            *("CYBN_ACT_" + a for a in ("NONE", "RELU", "CLIPPED_RELU", "LEAKY_RELU", "ELU", "SIGMOID", "TANH",
                                        "SWISH"))} <= set(pairs)
    assert {n: v for n, v in pairs.items() if v[0] != v[1]} == {}


def test_abi_header_holds_the_designed_ids():
    # Issue 11's shared design: these ids are fixed before the kernels use them (faces and C API v2 name them).
    assert [ABI[n] for n in ("BN_FLOAT32", "BN_FLOAT16", "BN_BFLOAT16", "BN_FLOAT64")] == [0, 1, 2, 3]
    assert [ABI[n] for n in ("BN_LAYOUT_NCHW", "BN_LAYOUT_NHWC")] == [0, 1]
    acts = ("NONE", "RELU", "CLIPPED_RELU", "LEAKY_RELU", "ELU", "SIGMOID", "TANH", "SWISH")
    assert [ABI["BN_ACT_" + a] for a in acts] == list(range(8))
    flags = [ABI[n] for n in ("BN_AFFINE", "BN_VEC", "BN_STAT_IS_VAR", "BN_SHIFTED", "BN_ROWVEC", "BN_BIASED_RUNVAR",
                              "BN_PARTIALS", "BN_SUMS", "BN_FIX_GAMMA")]
    assert all(f & (f - 1) == 0 for f in flags) and len(set(flags)) == len(flags)  # distinct single bits


def test_no_copy_of_the_abi_constants_elsewhere():
    # A kernel or Cython file that assigns a value to one of the header's names has a copy that can drift.
    names = "|".join(sorted(ABI, key=len, reverse=True))
    assign = re.compile(r"\b(?:%s)\b\s*=[^=]" % names)
    pkg = paths.package_dir()
    files = (glob.glob(os.path.join(pkg, "kernels", "*.cu*")) + glob.glob(os.path.join(pkg, "**", "*.pyx"), recursive=True)
             + glob.glob(os.path.join(pkg, "**", "*.pxd"), recursive=True)
             + glob.glob(os.path.join(pkg, "**", "*.pxi"), recursive=True))
    assert files
    copies = []
    for path in files:
        with open(path) as f:
            copies += [f"{os.path.relpath(path, pkg)}: {m.group(0)}" for m in assign.finditer(f.read())]
    assert copies == []
    with open(os.path.join(pkg, "kernels", "batchnorm.cu")) as f:
        included = re.findall(r'#include "([^"]+)"', f.read())
    # directly or through one of the kernel headers it includes
    assert "bn_abi.h" in included or any(
        '#include "bn_abi.h"' in open(os.path.join(pkg, "kernels", h)).read() for h in included)
    with open(os.path.join(pkg, "batchnorm", "batchnorm.pxd")) as f:
        assert 'cdef extern from "bn_abi.h"' in f.read()
