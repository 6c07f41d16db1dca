// runtime/config.cpp: the software GPU's configuration, read once from the environment
// (CYBN_SOFTGPU_*; softgpu.hpp lists them), and what was wrong with it.
#include <cctype>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>

#include "driver/driver.hpp"

namespace softgpu {

static std::string g_config_error;
const std::string& config_error() { return g_config_error; }

// Unsigned numbers only: strtoull would take "-1" as 2^64-1 and skip leading blanks.
static bool parse_u64(const char* s, uint64_t* out, const char** rest, int base) {
    if (!(*s >= '0' && *s <= '9')) return false;
    char* end = nullptr;
    errno = 0;
    unsigned long long v = strtoull(s, &end, base);
    if (end == s || errno == ERANGE) return false;
    *out = v, *rest = end;
    return true;
}

static bool parse_size(const char* s, uint64_t* out) {
    uint64_t v = 0;
    const char* end = nullptr;
    if (!parse_u64(s, &v, &end, 10)) return false;
    uint64_t mul = 1;
    if (*end == 'K' || *end == 'k') mul = 1ull << 10, end++;
    else if (*end == 'M' || *end == 'm') mul = 1ull << 20, end++;
    else if (*end == 'G' || *end == 'g') mul = 1ull << 30, end++;
    else if (*end == 'T' || *end == 't') mul = 1ull << 40, end++;
    if (*end == 'i' || *end == 'I') end++;
    if (*end == 'B' || *end == 'b') end++;
    if (*end != '\0' || v == 0 || v > UINT64_MAX / mul) return false;
    *out = v * mul;
    return true;
}

static std::string lower(std::string t) {
    for (char& ch : t) ch = (char)tolower((unsigned char)ch);
    return t;
}

static void parse_checks(const char* s, Config& c) {
    std::string text = lower(s);
    if (text.empty() || text == "all" || text == "1" || text == "on" || text == "true") return;  // streamcheck keeps its default: on when async
    c.memcheck = c.racecheck = c.initcheck = c.streamcheck = false;
    if (text == "none" || text == "0" || text == "off" || text == "false") return;
    std::stringstream ss(text);
    std::string item;
    bool any = false;
    while (std::getline(ss, item, ',')) {
        item.erase(0, item.find_first_not_of(" \t"));
        item.erase(item.find_last_not_of(" \t") + 1);
        if (item == "memcheck") c.memcheck = any = true;
        else if (item == "racecheck") c.racecheck = any = true;
        else if (item == "initcheck") c.initcheck = any = true;
        else if (item == "streamcheck") c.streamcheck = any = true;
        else { any = false; break; }
    }
    if (!any)
        g_config_error += std::string("CYBN_SOFTGPU_CHECKS='") + s +
                          "' is not valid (accepted: all, none, 1, 0, on, off, true, false, or a comma list of "
                          "memcheck,racecheck,initcheck,streamcheck); ";
}

// "0"/"1" switches (CYBN_SOFTGPU_ASYNC, CYBN_SOFTGPU_STICKY).
static void parse_switch(const char* name, bool* out) {
    const char* s = getenv(name);
    if (!s) return;
    std::string v(s);
    if (v == "1") *out = true;
    else if (v == "0" || v.empty()) *out = false;
    else g_config_error += std::string(name) + ": expected 0 or 1, not '" + v + "'; ";
}

Config& config() {
    static Config c = [] {
        Config c;
        parse_switch("CYBN_SOFTGPU_ASYNC", &c.async);
        parse_switch("CYBN_SOFTGPU_STICKY", &c.sticky);
        c.streamcheck = c.async;  // unless CYBN_SOFTGPU_CHECKS says otherwise
        if (const char* s = getenv("CYBN_SOFTGPU_CHECKS")) parse_checks(s, c);
        const char* end = nullptr;
        if (const char* s = getenv("CYBN_SOFTGPU_SEED"))
            if (!parse_u64(s, &c.seed, &end, 0) || *end)
                g_config_error += std::string("CYBN_SOFTGPU_SEED='") + s +
                                  "' is not valid (accepted: a non-negative integer; 0 = deterministic); ";
        if (const char* s = getenv("CYBN_SOFTGPU_ASYNC_SEED"))
            if (!parse_u64(s, &c.async_seed, &end, 0) || *end)
                g_config_error += std::string("CYBN_SOFTGPU_ASYNC_SEED='") + s +
                                  "' is not valid (accepted: a non-negative integer; 0 = no random delays); ";
        if (const char* s = getenv("CYBN_SOFTGPU_MEMORY"))
            if (!parse_size(s, &c.memory_bytes))
                g_config_error += std::string("CYBN_SOFTGPU_MEMORY='") + s +
                                  "' is not valid (accepted: a positive size in bytes, suffix K, M, G or T, e.g. 512M, 4G); ";
        if (const char* s = getenv("CYBN_SOFTGPU_WATCHDOG"))
            if (!parse_u64(s, &c.watchdog, &end, 0) || *end || c.watchdog == 0)
                g_config_error += std::string("CYBN_SOFTGPU_WATCHDOG='") + s +
                                  "' is not valid (accepted: a positive integer count of thread-instructions); ";
        if (const char* s = getenv("CYBN_SOFTGPU_TRACE"))
            if (strcmp(s, "0") && strcmp(s, "1") && *s)
                g_config_error += std::string("CYBN_SOFTGPU_TRACE='") + s + "' is not valid (accepted: 0 or 1); ";
        if (!g_config_error.empty()) fprintf(stderr, "softgpu: %s\n", g_config_error.c_str());
        return c;
    }();
    return c;
}

}  // namespace softgpu
