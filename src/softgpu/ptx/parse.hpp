// ptx/parse.hpp: PTX text -> tokens -> module-level structure (functions with statement lists).
// The decoder (ptx/decode.cpp) turns this into the executable Module.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace softgpu {

struct Tok {
    std::string s;
    uint32_t line = 0;
    char kind = 'i';  // 'i' identifier/number/register, 'p' punctuation, 's' string
    bool is(const char* text) const { return s == text; }
};

// One statement (without its ';'), or a label, or a scope brace.
struct Stmt {
    enum Kind { Instr, Label, Open, Close } kind = Instr;
    uint32_t line = 0;
    std::vector<Tok> t;
};

// A variable or parameter declaration: `.global .align 4 .f32 name[10] = {...}`.
struct VarDecl {
    std::string space;  // ".global", ".shared", ".const", ".local", ".param", ".reg"
    std::string type;   // ".f32", ".b8" ...
    std::string name;
    uint32_t align = 0;
    uint64_t count = 1;   // array elements (0 for `name[]`)
    bool is_array = false;
    bool is_extern = false;
    uint32_t vec = 1;     // .v2/.v4
    std::vector<Tok> init;  // initialiser tokens after '='
    uint32_t line = 0;
};

struct FuncText {
    std::string name;
    bool entry = false;
    bool has_body = false;
    uint32_t line = 0;
    std::vector<VarDecl> params, rets;
    uint32_t maxntid[3] = {0, 0, 0}, reqntid[3] = {0, 0, 0};
    std::vector<Stmt> body;
};

struct ParsedModule {
    std::vector<VarDecl> vars;       // module scope
    std::vector<FuncText> funcs;
};

// Returns false and sets *error ("line N: ...") on malformed text or unknown directives.
bool parse_ptx(const char* text, size_t len, ParsedModule* out, std::string* error);
// Parses a declaration statement's tokens starting at a state-space token (.reg/.shared/...).
bool parse_decl(const std::vector<Tok>& t, size_t i, VarDecl* d, std::string* error);

}  // namespace softgpu
