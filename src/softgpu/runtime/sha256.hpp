// runtime/sha256.hpp: SHA-256 (FIPS 180-4), for naming cache entries by their content.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace softgpu {

class Sha256 {
public:
    Sha256();
    void update(const void* data, size_t len);
    std::string hex();  // finishes the hash

private:
    void block(const uint8_t* p);
    uint32_t h_[8];
    uint8_t buf_[64];
    size_t fill_ = 0;
    uint64_t total_ = 0;
};

}  // namespace softgpu
