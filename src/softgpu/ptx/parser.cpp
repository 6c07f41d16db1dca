// ptx/parser.cpp: PTX lexer and module-level parser (directives, declarations, function bodies as
// statement lists). Instruction semantics are left to the decoder.
#include <cstring>

#include "ptx/parse.hpp"
#include "ptx/types.hpp"

namespace softgpu {

namespace {

bool ident_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '$' ||
           c == '%' || c == '.';
}

void tokenize(const char* p, size_t len, std::vector<Tok>* out) {
    const char* end = p + len;
    uint32_t line = 1;
    while (p < end && *p) {
        char c = *p;
        if (c == '\n') { ++line; ++p; continue; }
        if (c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v') { ++p; continue; }
        if (c == '/' && p + 1 < end && p[1] == '/') {
            while (p < end && *p && *p != '\n') ++p;
            continue;
        }
        if (c == '/' && p + 1 < end && p[1] == '*') {
            p += 2;
            while (p + 1 < end && !(p[0] == '*' && p[1] == '/')) line += (*p++ == '\n');
            p += 2;
            continue;
        }
        Tok t;
        t.line = line;
        if (c == '"') {
            const char* s = ++p;
            while (p < end && *p && *p != '"') ++p;
            t.s.assign(s, p - s);
            t.kind = 's';
            if (p < end && *p) ++p;
        } else if (ident_char(c)) {
            const char* s = p;
            // `::` belongs to cache-hint qualifiers such as ld.global.L1::evict_last.
            while (p < end && (ident_char(*p) || (*p == ':' && p + 1 < end && p[1] == ':' && p > s)))
                p += (*p == ':') ? 2 : 1;
            t.s.assign(s, p - s);
            // Directives glued together (`.reg.b32`) are separate words.
            if (t.s.size() > 1 && t.s[0] == '.' && t.s.find('.', 1) != std::string::npos &&
                !(t.s[1] >= '0' && t.s[1] <= '9')) {
                size_t a = 0;
                while (a < t.s.size()) {
                    size_t b = t.s.find('.', a + 1);
                    if (b == std::string::npos) b = t.s.size();
                    Tok part = t;
                    part.s = t.s.substr(a, b - a);
                    out->push_back(part);
                    a = b;
                }
                continue;
            }
        } else {
            t.s.assign(1, c);
            t.kind = 'p';
            ++p;
        }
        out->push_back(std::move(t));
    }
}

struct Parser {
    std::vector<Tok> t;
    size_t i = 0;
    std::string* error;
    ParsedModule* out;

    bool fail(uint32_t line, const std::string& msg) {
        *error = "line " + std::to_string(line) + ": " + msg;
        return false;
    }
    bool at_end() const { return i >= t.size(); }
    const Tok& cur() const { return t[i]; }
    void skip_line() {
        uint32_t line = t[i].line;
        while (i < t.size() && t[i].line == line) ++i;
    }
    bool skip_to_semicolon() {
        while (i < t.size() && !t[i].is(";")) ++i;
        if (i >= t.size()) return fail(t.back().line, "missing ';'");
        ++i;
        return true;
    }
    // A statement's tokens up to (not including) ';'.
    bool statement(std::vector<Tok>* s) {
        uint32_t line = t[i].line;
        while (i < t.size() && !t[i].is(";")) s->push_back(t[i++]);
        if (i >= t.size()) return fail(line, "statement not terminated by ';'");
        ++i;
        return true;
    }

    bool run() {
        while (!at_end()) {
            const Tok& k = cur();
            if (k.is(".version") || k.is(".target") || k.is(".address_size") || k.is(".file")) {
                if (k.is(".address_size") && i + 1 < t.size() && !t[i + 1].is("64"))
                    return fail(k.line, "only .address_size 64 is supported");
                skip_line();
                continue;
            }
            if (k.is(".section")) {  // debug sections: skip the braced block
                while (i < t.size() && !t[i].is("{")) ++i;
                int depth = 0;
                for (; i < t.size(); ++i) {
                    if (t[i].is("{")) ++depth;
                    if (t[i].is("}") && --depth == 0) { ++i; break; }
                }
                continue;
            }
            if (k.is(".pragma")) { if (!skip_to_semicolon()) return false; continue; }
            bool is_extern = false;
            size_t start = i;
            while (!at_end() && (cur().is(".visible") || cur().is(".weak") || cur().is(".extern") ||
                                 cur().is(".common"))) {
                is_extern |= cur().is(".extern");
                ++i;
            }
            if (at_end()) return fail(t[start].line, "unexpected end of text after linkage directive");
            if (cur().is(".entry") || cur().is(".func")) {
                if (!function()) return false;
                continue;
            }
            if (cur().is(".global") || cur().is(".const") || cur().is(".shared") || cur().is(".local")) {
                std::vector<Tok> s;
                if (!statement(&s)) return false;
                VarDecl d;
                if (!parse_decl(s, 0, &d, error)) return false;
                d.is_extern = is_extern;
                out->vars.push_back(std::move(d));
                continue;
            }
            return fail(cur().line, "unknown or unsupported directive '" + cur().s + "' at module scope");
        }
        return true;
    }

    bool param_list(std::vector<VarDecl>* list) {
        // '(' already consumed; `.param .type name[, ...]` until ')'
        while (!at_end() && !cur().is(")")) {
            std::vector<Tok> s;
            uint32_t line = cur().line;
            while (!at_end() && !cur().is(",") && !cur().is(")")) s.push_back(t[i++]);
            if (at_end()) return fail(line, "unterminated parameter list");
            if (cur().is(",")) ++i;
            VarDecl d;
            if (s.empty() || !parse_decl(s, 0, &d, error)) return error->empty() ? fail(line, "bad parameter") : false;
            list->push_back(std::move(d));
        }
        if (at_end()) return fail(t.back().line, "unterminated parameter list");
        ++i;  // ')'
        return true;
    }

    bool dims(uint32_t* v) {
        ++i;
        for (int n = 0; n < 3 && !at_end(); ++n) {
            v[n] = uint32_t(strtoul(cur().s.c_str(), nullptr, 0));
            ++i;
            if (at_end() || !cur().is(",")) break;
            ++i;
        }
        for (int n = 0; n < 3; ++n)
            if (!v[n]) v[n] = 1;
        return true;
    }

    bool function() {
        FuncText f;
        f.entry = cur().is(".entry");
        f.line = cur().line;
        ++i;
        if (!at_end() && cur().is("(")) {
            ++i;
            if (!param_list(&f.rets)) return false;
        }
        if (at_end() || cur().kind != 'i') return fail(f.line, "function name expected");
        f.name = cur().s;
        ++i;
        if (!at_end() && cur().is("(")) {
            ++i;
            if (!param_list(&f.params)) return false;
        }
        // Performance directives up to the body or ';'.
        while (!at_end() && !cur().is("{") && !cur().is(";")) {
            const Tok& d = cur();
            if (d.is(".maxntid")) dims(f.maxntid);
            else if (d.is(".reqntid")) dims(f.reqntid);
            else if (d.is(".minnctapersm") || d.is(".maxnreg") || d.is(".maxnctapersm")) i += 2;
            else if (d.is(".noreturn")) ++i;
            else if (d.is(".pragma")) { ++i; if (!at_end() && cur().kind == 's') ++i; }
            else return fail(d.line, "unknown or unsupported directive '" + d.s + "' in the declaration of " + f.name);
        }
        if (at_end()) return fail(f.line, "unterminated declaration of " + f.name);
        if (cur().is(";")) {
            ++i;
            out->funcs.push_back(std::move(f));
            return true;
        }
        ++i;  // '{'
        f.has_body = true;
        int depth = 0;
        while (true) {
            if (at_end()) return fail(f.line, "unterminated body of " + f.name);
            const Tok& k = cur();
            Stmt s;
            s.line = k.line;
            if (k.is("{")) { ++depth; ++i; s.kind = Stmt::Open; f.body.push_back(s); continue; }
            if (k.is("}")) {
                ++i;
                if (depth-- == 0) break;
                s.kind = Stmt::Close;
                f.body.push_back(s);
                continue;
            }
            if (k.is(".loc") || k.is(".file")) { skip_line(); continue; }
            if (k.is(".pragma")) { if (!skip_to_semicolon()) return false; continue; }
            if (k.is(";")) { ++i; continue; }
            if (k.kind == 'i' && i + 1 < t.size() && t[i + 1].is(":")) {
                s.kind = Stmt::Label;
                s.t.push_back(k);
                i += 2;
                f.body.push_back(std::move(s));
                continue;
            }
            if (!statement(&s.t)) return false;
            f.body.push_back(std::move(s));
        }
        out->funcs.push_back(std::move(f));
        return true;
    }
};

}  // namespace

bool parse_decl(const std::vector<Tok>& t, size_t i, VarDecl* d, std::string* error) {
    uint32_t line = t.empty() ? 0 : t[0].line;
    d->line = line;
    auto fail = [&](const std::string& m) {
        *error = "line " + std::to_string(line) + ": " + m;
        return false;
    };
    for (; i < t.size(); ++i) {
        const std::string& s = t[i].s;
        if (s == ".extern") d->is_extern = true;
        else if (s == ".visible" || s == ".weak" || s == ".common" || s == ".ptr") {}
        else if (s == ".global" || s == ".shared" || s == ".const" || s == ".local" || s == ".param" || s == ".reg") {
            if (d->space.empty()) d->space = s;  // `.ptr .global` after .param names the pointee space
        } else if (s == ".align") {
            if (i + 1 >= t.size()) return fail(".align needs a value");
            d->align = uint32_t(strtoul(t[++i].s.c_str(), nullptr, 0));
        } else if (s == ".v2" || s == ".v4" || s == ".v8") d->vec = uint32_t(s[2] - '0');
        else if (s[0] == '.') {
            if (!type_size_bytes(s)) return fail("unknown or unsupported type or directive '" + s + "' in a declaration");
            d->type = s;
        } else break;
    }
    if (i >= t.size() || t[i].kind != 'i') return fail("declaration without a name");
    d->name = t[i++].s;
    if (d->type.empty()) return fail("declaration of " + d->name + " without a type");
    while (i < t.size() && t[i].is("[")) {
        d->is_array = true;
        ++i;
        if (i < t.size() && t[i].is("]")) {
            d->count = 0;
            ++i;
            continue;
        }
        if (i + 1 >= t.size() || !t[i + 1].is("]")) return fail("bad array size of " + d->name);
        d->count *= strtoull(t[i].s.c_str(), nullptr, 0);
        i += 2;
    }
    if (i < t.size() && t[i].is("<")) {  // %r<17>: a register range, kept as the count
        if (i + 2 >= t.size() || !t[i + 2].is(">")) return fail("bad register range of " + d->name);
        d->count = strtoull(t[i + 1].s.c_str(), nullptr, 0);
        d->is_array = true;
        i += 3;
        d->init.push_back(Tok{"<>", line, 'p'});  // marks the range form for the decoder
        return true;
    }
    if (i < t.size() && t[i].is("=")) {
        d->init.assign(t.begin() + i + 1, t.end());
        return true;
    }
    if (i < t.size() && t[i].is(",")) return true;  // caller handles lists
    if (i < t.size()) return fail("unexpected '" + t[i].s + "' in the declaration of " + d->name);
    return true;
}

bool parse_ptx(const char* text, size_t len, ParsedModule* out, std::string* error) {
    Parser p;
    p.error = error;
    p.out = out;
    tokenize(text, len, &p.t);
    if (p.t.empty()) {
        *error = "empty PTX text";
        return false;
    }
    return p.run();
}

}  // namespace softgpu
