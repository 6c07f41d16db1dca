"""MemoryPool under threads: its softgpu hook (_extent, a ctypes call) releases the GIL, so another thread
can enter the pool halfway through moving pending blocks to the free lists. Run in a fresh process: the
hook is looked up once per process, and this test replaces it with one that runs a second thread's
malloc at exactly that point."""
import os
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = textwrap.dedent("""
    import threading
    from cybn import softgpu
    softgpu.load()
    real = softgpu._pool_block_function()
    state = {"pool": None, "stream": None, "armed": False, "other": []}

    def hook(ptr, nbytes, stream):
        r = real(ptr, nbytes, stream)
        if nbytes == 0 and state["armed"]:  # a pending block going back to a free list: GIL released here
            state["armed"] = False
            t = threading.Thread(target=lambda: state["other"].append(state["pool"].malloc(1000, state["stream"])))
            t.start()
            t.join()
        return r

    softgpu._pool_block_function = lambda: hook
    import cybn
    from cybn.memory import MemoryPool
    pool, s = MemoryPool(), cybn.Stream()
    state["pool"], state["stream"] = pool, s
    before = softgpu.live_allocations()[0]
    a, a2 = pool.malloc(1000, stream=s), pool.malloc(1000, stream=s)
    ptr, ptr2 = a.ptr, a2.ptr
    del a, a2                    # freed on the legacy stream, not their own: pending until an event each
    assert pool.free_blocks == 2
    state["armed"] = True
    b = pool.malloc(1000, stream=s)   # collects the pending block; the other thread mallocs meanwhile
    c = state["other"].pop()
    print("SAME" if b.ptr == c.ptr else "DISTINCT", b.ptr in (ptr, ptr2))
    del b, c
    pool.free_all()              # raised CUDA_ERROR_INVALID_VALUE: the shared block was cached twice
    print("held", pool.held_bytes, "blocks", pool.free_blocks, "leaked", softgpu.live_allocations()[0] - before)
""")


def test_pending_block_collected_by_two_threads_goes_to_one_owner():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.split() == ["DISTINCT", "True", "held", "0", "blocks", "0", "leaked", "0"], r.stdout
