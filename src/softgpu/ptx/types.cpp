// ptx/types.cpp: PTX type names -> Type, from the table in ptx/types.def.
#include "ptx/types.hpp"

#include <unordered_map>

namespace softgpu {

Type parse_type(const std::string& word) {
    static const std::unordered_map<std::string, Type> names = [] {
        std::unordered_map<std::string, Type> m;
        for (int t = T_NONE + 1; t < int(sizeof(kTypes) / sizeof(kTypes[0])); ++t) m[kTypes[t].name] = Type(t);
        return m;
    }();
    auto it = names.find(word);
    return it == names.end() ? T_NONE : it->second;
}

uint64_t type_size_bytes(const std::string& dotted) {
    if (dotted.size() < 2 || dotted[0] != '.') return 0;
    return kTypes[parse_type(dotted.substr(1))].bytes;
}

}  // namespace softgpu
