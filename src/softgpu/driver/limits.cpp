// driver/limits.cpp: the context limits the engine's device-side runtime needs (the malloc heap
// and the printf FIFO sizes set with cuCtxSetLimit), read for the calling thread's context.
#include "driver/driver.hpp"

namespace softgpu {

DeviceLimits device_limits() {
    DeviceLimits l;
    if (CUctx_st* ctx = current_ctx()) {
        l.malloc_heap = ctx->malloc_heap;
        l.printf_fifo = ctx->printf_fifo;
    }
    return l;
}

}  // namespace softgpu
