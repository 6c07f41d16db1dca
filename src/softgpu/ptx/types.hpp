// ptx/types.hpp: PTX's fundamental types, generated from the one table in ptx/types.def.
#pragma once

#include <cstdint>
#include <string>

namespace softgpu {

enum Type : uint8_t {
    T_NONE,
#define SG_TYPE(e, name, bits, bytes, cls) T_##e,
#include "ptx/types.def"
#undef SG_TYPE
};

struct TypeInfo {
    const char* name;  // PTX spelling without the dot
    uint8_t bits;      // value width (1 for .pred)
    uint8_t bytes;     // storage size of a declared variable or parameter
    char cls;          // 'B', 'U', 'S', 'F', 'P'; 0 for T_NONE
};

inline constexpr TypeInfo kTypes[] = {
    {"", 0, 0, 0},
#define SG_TYPE(e, name, bits, bytes, cls) {name, bits, bytes, cls},
#include "ptx/types.def"
#undef SG_TYPE
};

inline int type_bits(Type t) { return kTypes[t].bits; }
inline bool type_signed(Type t) { return kTypes[t].cls == 'S'; }
inline bool type_float(Type t) { return kTypes[t].cls == 'F'; }

// "f32" -> T_F32; T_NONE for a word that is not a type.
Type parse_type(const std::string& word);
// ".f32" (a declaration's type, with its dot) -> 4; 0 when unknown.
uint64_t type_size_bytes(const std::string& dotted);

}  // namespace softgpu
