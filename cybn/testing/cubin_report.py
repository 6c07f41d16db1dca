"""Registers, spills and bytes in flight per thread of the BatchNorm kernels, from a CUBIN that NVRTC builds
for a real architecture (sm_80, sm_90) with ptxas -v.

Bytes in flight per thread: in each innermost loop of a kernel's SASS (nvdisasm from the nvidia-cuda-nvdisasm
wheel), the most global-load bytes outstanding at once over two passes of the loop body in address order
(a load is outstanding from its LDG until the first instruction that reads or writes one of its destination
registers), so loads the compiler hoists across the back edge count too. Branches inside the body are read
as if every instruction ran, except that an instruction in the other arm of an if/else than the load's does
not end it (that arm never runs with it: _exclusive_arms). A kernel's figure for its 16-byte path ("vec") is the smallest over its
loops that issue 128-bit loads, for its scalar path ("scalar") the smallest over loops that issue only
narrower ones: the streaming passes dominate, and the slowest of them is what the model charges. A loop
whose only loads are strong (volatile: LDG.E.STRONG.*, PTX ld.volatile) is a barrier's spin, not a stream,
and is not counted. Without
nvdisasm the same count runs on the PTX (before ptxas schedules it: it can only undercount hoisting), and
the report says which."""
import functools
import glob
import os
import re
import subprocess
import tempfile

from cybn import batchnorm
from cybn.jit import cache

KERNELS = ("bn_fwd_train", "bn_normalize", "bn_bwd", "bn_bwd_dx")


def nvdisasm_path():
    """The nvdisasm of the nvidia-cuda-nvdisasm wheel, or None (a system CUDA is never used)."""
    try:
        import nvidia
    except ImportError:
        return None
    for base in nvidia.__path__:
        for found in sorted(glob.glob(os.path.join(base, "*", "bin", "nvdisasm"))):
            if os.access(found, os.X_OK):
                return found
    return None


def ptxas_report(log):
    """{mangled function: {"registers", "spill_stores", "spill_loads", "smem"}} from ptxas -v output."""
    out, current = {}, None
    for line in log.splitlines():
        m = re.search(r"Function properties for (\S+)", line)
        if m:
            current = out.setdefault(m.group(1), {"registers": 0, "spill_stores": 0, "spill_loads": 0, "smem": 0})
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            current["spill_stores"], current["spill_loads"] = int(m.group(1)), int(m.group(2))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            current["registers"] = int(m.group(1))
            m = re.search(r"(\d+) bytes smem", line)
            current["smem"] = int(m.group(1)) if m else 0
    return out


_LOAD_BYTES = {"128": 16, "64": 8, "U16": 2, "S16": 2, "U8": 1, "S8": 1}


def _sass_instructions(text):
    """Per function: a list of ("label", name) and ("op", opcode, operands, guard) in address order; guard is
    the instruction's predicate as written ("P1", "!P1"), or "" where it has none."""
    funcs, cur = {}, None
    for line in text.splitlines():
        m = re.match(r"^\.text\.(\S+):", line)
        if m:
            cur = funcs.setdefault(m.group(1), [])
            continue
        if cur is None:
            continue
        m = re.match(r"^(\.L\w+):", line)
        if m:
            cur.append(("label", m.group(1)))
            continue
        m = re.match(r"^\s*/\*[0-9a-f]+\*/\s+(?:@(!?U?P\w+)\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);", line)
        if m:
            cur.append(("op", m.group(2), m.group(3), m.group(1) or ""))
    return funcs


def _regs(operand):
    """Register numbers an operand names (R4, R4.64 -> R4 R5, [R2.64+0x4])."""
    regs = set()
    for r, wide in re.findall(r"\bR(\d+)(\.64)?", operand):
        regs.add(int(r))
        if wide:
            regs.add(int(r) + 1)
    return regs


def _sass_load(opcode):
    """Bytes an LDG loads (None: not a global load)."""
    if not opcode.startswith("LDG"):
        return None
    for part in opcode.split(".")[1:]:
        if part in _LOAD_BYTES:
            return _LOAD_BYTES[part]
    return 4


def _branch_target(ins):
    m = re.search(r"\((\.L\w+)\)", ins[2]) if ins[0] == "op" and ins[1].startswith("BRA") else None
    return m.group(1) if m else None


def _exclusive_arms(body):
    """Per item of a loop body, the set of (if/else, arm) it lies in. An if/else is a forward branch to a
    label X whose preceding instruction is a branch to a label J after X: items between the branch and that
    jump are arm 0, items from X to J arm 1. No run of the loop executes both arms of one if/else."""
    where = {it[1]: i for i, it in enumerate(body) if it[0] == "label"}
    tags = [set() for _ in body]
    for i, ins in enumerate(body):
        x = where.get(_branch_target(ins))
        if x is None or x <= i + 1:
            continue
        j = where.get(_branch_target(body[x - 1]))
        if j is None or j <= x:
            continue
        for k in range(i + 1, x):
            tags[k].add((i, 0))
        for k in range(x, j):
            tags[k].add((i, 1))
    return tags


def _exclusive(a, b):
    """Whether two items' arm sets put them in different arms of one if/else."""
    return any((d, 1 - arm) in b for d, arm in a)


def _guard(ins):
    """(predicate, negated) of a guarded instruction, else None (PT: always true)."""
    g = ins[3] if ins[0] == "op" and len(ins) > 3 else ""
    return (g.lstrip("!"), g.startswith("!")) if g and g.lstrip("!") not in ("PT", "UPT") else None


def _predicates_written(ins):
    """The predicates an instruction sets: its leading predicate operands (ISETP P1, PT, ...)."""
    out = set()
    for o in ins[2].split(",") if ins[0] == "op" else ():
        o = o.strip().lstrip("!")
        if not re.fullmatch(r"U?P(\d+|T)", o):
            break
        out.add(o)
    return out


class _Load:
    """One outstanding load (compared by identity): its bytes, if/else arms, guard, predicates set since."""
    __slots__ = ("nbytes", "arms", "guard", "rewritten")

    def __init__(self, nbytes, arms, guard):
        self.nbytes, self.arms, self.guard, self.rewritten = nbytes, arms, guard, set()

    def never_with(self, arms, guard):
        """Whether an instruction in `arms` under `guard` never runs in the same pass as this load."""
        g = self.guard
        return (_exclusive(self.arms, arms) or
                (g is not None and guard is not None and g[0] == guard[0] and g[1] != guard[1]
                 and g[0] not in self.rewritten))


def _max_outstanding(body, load_bytes, dest_and_sources):
    """Most load bytes outstanding at once over two passes of a loop body, and whether it loads 16 bytes.
    A load is outstanding until an instruction reads or writes one of its destination registers, except one
    that never runs with it: in the other arm of an if/else the load is in (_exclusive_arms), or guarded by
    the complement of the load's predicate while that predicate is unchanged (@P1 LDG R16 / @!P1 LDS R16).
    Both are the cached-or-global replay, where that register holds the shared-memory load's address or
    result instead."""
    pending, best, wide = {}, 0, False
    arms = _exclusive_arms(body)
    for _ in range(2):
        for i, ins in enumerate(body):
            nbytes = load_bytes(ins)
            dests, sources = dest_and_sources(ins)
            guard = _guard(ins)
            # a read waits for the load; so does a write of its register (the scoreboard's write-after-write)
            hit = {pending[r] for r in sources | dests if r in pending and not pending[r].never_with(arms[i], guard)}
            if hit:
                pending = {r: k for r, k in pending.items() if k not in hit}
            written = _predicates_written(ins)
            for load in set(pending.values()) if written else ():  # a rewritten guard tells nothing apart
                load.rewritten |= written
            if nbytes:
                wide = wide or nbytes == 16
                load = _Load(nbytes, arms[i], guard)
                for r in dests:
                    pending[r] = load
                best = max(best, sum(k.nbytes for k in set(pending.values())))
    return best, wide


def _innermost_loops(items):
    """Bodies (lists of items) of backward branches that contain no other backward branch."""
    where = {it[1]: i for i, it in enumerate(items) if it[0] == "label"}
    loops = []
    for i, it in enumerate(items):
        t = _branch_target(it)
        if t in where and where[t] < i:
            loops.append((where[t], i))
    inner = [(a, b) for a, b in loops if not any(a <= c and d <= b and (c, d) != (a, b) for c, d in loops)]
    return [items[a:b + 1] for a, b in inner]


def _sass_dest_sources(ins):
    if ins[0] != "op":
        return set(), set()
    ops = [o.strip() for o in ins[2].split(",")] if ins[2].strip() else []
    if ins[1].startswith(("ST", "RED", "BRA", "EXIT", "BAR", "CALL", "RET")) or not ops:
        return set(), set().union(*map(_regs, ops))
    dests, sources = _regs(ops[0]), set().union(*map(_regs, ops[1:]))
    nbytes = _sass_load(ins[1])
    if nbytes and dests:  # a vector load fills consecutive registers
        dests = set(range(min(dests), min(dests) + max(1, nbytes // 4)))
    return dests, sources


def sass_inflight(cubin_bytes):
    """{mangled function: {"vec": bytes or None, "scalar": bytes or None}} from nvdisasm of a CUBIN."""
    tool = nvdisasm_path()
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin_bytes)
        f.flush()
        text = subprocess.run([tool, "-c", f.name], check=True, capture_output=True, text=True).stdout
    out = {}
    for fn, items in _sass_instructions(text).items():
        res = {"vec": None, "scalar": None}
        for body in _innermost_loops(items):
            loads = [it[1] for it in body if it[0] == "op" and _sass_load(it[1])]
            if not loads or all(".STRONG." in op for op in loads):  # none, or a spin on a volatile flag (a barrier)
                continue
            best, wide = _max_outstanding(body, lambda ins: _sass_load(ins[1]) if ins[0] == "op" else None,
                                          _sass_dest_sources)
            k = "vec" if wide else "scalar"
            res[k] = best if res[k] is None else min(res[k], best)
        out[fn] = res
    return out


def ptx_inflight(ptx_text):
    """The same count on PTX (before ptxas schedules it), for when nvdisasm is not installed."""
    out, cur, items = {}, None, None
    for line in ptx_text.splitlines():
        m = re.match(r"^\s*(?:\.visible\s+|\.weak\s+)?\.entry\s+(\w+)", line)
        if m:
            cur, items = m.group(1), []
            out[cur] = items
            continue
        if items is None:
            continue
        m = re.match(r"^\$(\w+):", line.strip())
        if m:
            items.append(("label", "." + m.group(1)))
            continue
        m = re.match(r"^\s*(?:@!?%p\d+\s+)?([a-z][\w.]*)\s+([^;]*);", line)
        if m:
            op, args = m.group(1), m.group(2).replace("$", ".")
            if op.startswith("bra"):
                op, args = "BRA", "(" + args.strip() + ")"
            items.append(("op", op, args))

    def load(ins):
        if ins[0] != "op" or not ins[1].startswith("ld.global"):
            return None
        width = int(re.search(r"\.[bfsu](\d+)", ins[1]).group(1)) // 8 if re.search(r"\.[bfsu](\d+)", ins[1]) else 4
        return width * (4 if ".v4" in ins[1] else 2 if ".v2" in ins[1] else 1)

    def regs(operand):
        return set(re.findall(r"%\w+", operand)) - {"%tid", "%ctaid", "%ntid", "%nctaid"}

    def dest_sources(ins):
        if ins[0] != "op":
            return set(), set()
        ops = [o.strip() for o in re.split(r",(?![^{]*})", ins[2])]
        if ins[1].startswith(("st", "red", "BRA", "bar", "ret")):
            return set(), set().union(*map(regs, ops))
        return regs(ops[0]), set().union(*map(regs, ops[1:])) if len(ops) > 1 else set()

    result = {}
    for fn, items in out.items():
        res = {"vec": None, "scalar": None}
        for body in _innermost_loops(items):
            if not any(load(it) for it in body):
                continue
            best, wide = _max_outstanding(body, load, dest_sources)
            k = "vec" if wide else "scalar"
            res[k] = best if res[k] is None else min(res[k], best)
        result[fn] = res
    return result


_SOURCES = {"nchw": ("batchnorm.cu", "kernel_expressions"), "nhwc": ("batchnorm_nhwc.cu", "nhwc_kernel_expressions")}


@functools.lru_cache(maxsize=None)
def kernel_report(arch, program=(None, 0), source="nchw"):
    """{(kernel base name, ctype, family): {"registers", "spill_stores", "spill_loads", "smem",
    "inflight": {"vec", "scalar"}}} for every BatchNorm kernel of one program (dtype code, EPI; default the
    float32/float16 plain one; ("span", EPI): a SPAN program) of one source on `arch` (e.g. "sm_90"), and the method used for the in-flight
    count ("SASS (nvdisasm)" or "PTX"). source "nchw": batchnorm.cu (family "spatial"); "nhwc":
    batchnorm_nhwc.cu (family "nhwc": channels last and every per-activation call), its kernels named by the
    base names of batchnorm.cu's (bn_nhwc_fwd_train -> bn_fwd_train)."""
    filename, exprs_of = _SOURCES[source]
    text, name, directory = cache.resolve_source(filename)
    if program[0] == "span":  # ("span", EPI): a SPAN program of batchnorm.cu (its kernels keyed "<base>_span")
        exprs, options = batchnorm.span_kernel_expressions(program[1]), batchnorm.span_compile_options(program[1])
    else:
        exprs = getattr(batchnorm, exprs_of)(*program)
        options = batchnorm.compile_options(*program)
    # Through the kernel cache (its entries keep NVRTC's log, i.e. the ptxas report): compiled once per machine.
    img = cache.compile_cached(text, name, options + ("--ptxas-options=-v",), exprs, "cubin",
                               arch, source_dir=directory)
    facts = ptxas_report(img.log)
    if nvdisasm_path():
        inflight, method = sass_inflight(img.image), "SASS (nvdisasm)"
    else:
        ptx = cache.compile_cached(text, name, options, exprs, "ptx",
                                   "compute_" + arch.split("_")[1], source_dir=directory)
        inflight, method = ptx_inflight(ptx.image.rstrip(b"\0").decode()), "PTX (nvdisasm not installed)"
    report = {}
    for expr in exprs:
        if source == "nhwc":
            m = re.match(r"bn_nhwc_(\w+?)<(\w+)(?:, \d+)?>", expr)
            key = ("bn_" + m.group(1), m.group(2), "nhwc")
        else:
            m = re.match(r"(\w+?)_(spatial)<(\w+)(?:, \d+)?(, true)?>", expr)
            key = (m.group(1) + ("_span" if m.group(4) else ""), m.group(3), m.group(2))
        mangled = img.lowered[expr]
        report[key] = dict(facts[mangled], inflight=inflight.get(mangled, {}))
    return report, method


def family(mode="spatial", layout="NCHW"):
    """The kernel family of a call: "nhwc" (batchnorm_nhwc.cu) for channels last and every per-activation
    call ((N, F) rows), "spatial" (batchnorm.cu) otherwise."""
    return "nhwc" if (layout == "NHWC" or mode == "per_activation") else "spatial"


def kernel_facts(arch, dtype, mode, layout="NCHW"):
    """{kernel base name: facts} for one dtype ("float32", "float16", "bfloat16", "float64"), mode and layout,
    from kernel_report, with each missing in-flight class filled by the other (a kernel without a 16-byte
    loop has one path)."""
    programs = {"float32": ((None, 0), "float"), "float16": ((None, 0), "__half"),
                "bfloat16": ((2, 0), "__nv_bfloat16"), "float64": ((3, 0), "double")}  # dtype codes of bn_abi.h
    program, ctype = programs[str(dtype)]
    fam = family(mode, layout)
    report, _ = kernel_report(arch, program, "nhwc" if fam == "nhwc" else "nchw")
    names = [(k, report) for k in KERNELS]
    if fam == "spatial":  # and the SPAN program's ("<base>_span": plans with vec 3)
        names += [(k + "_span", kernel_report(arch, ("span", 0))[0]) for k in KERNELS]
    out = {}
    for k, report in names:
        f = dict(report[(k, ctype, fam)])
        fl = dict(f["inflight"])
        fl["vec"] = fl.get("vec") or fl.get("scalar") or 4
        fl["scalar"] = fl.get("scalar") or fl["vec"]
        f["inflight"] = fl
        out[k] = f
    return out
