"""Which files a kernel source pulls in: every #include line, followed recursively through the in-memory
headers and the include path, the way NVRTC resolves them.

The kernel cache hashes the result, so editing any header a kernel includes (ours or the wheel's)
changes its key. The scan deliberately ignores #if/#ifdef: it may list a header the preprocessor would
skip, which only makes the key more conservative, never stale."""
import os
import re

# Matches #include "x" and #include <x> at the start of a line (leading blanks allowed). A computed
# #include MACRO doesn't match; its line still lands in the key through the including file's text.
_INCLUDE = re.compile(rb'^[ \t]*#[ \t]*include[ \t]*([<"])([^>"\r\n]+)[>"]', re.M)

_file_memo = {}  # (path, mtime_ns, size, inode) -> (content bytes, [(quote, name)])


def _read(path):
    """File content and its include list, memoised on the file's identity (one scan per process)."""
    st = os.stat(path)
    key = (path, st.st_mtime_ns, st.st_size, st.st_ino)
    hit = _file_memo.get(key)
    if hit is None:
        with open(path, "rb") as f:
            data = f.read()
        hit = (data, [(m.group(1), m.group(2).decode("utf-8", "replace").strip()) for m in _INCLUDE.finditer(data)])
        _file_memo[key] = hit
    return hit


def _parse(text):
    return [(m.group(1), m.group(2).decode("utf-8", "replace").strip()) for m in _INCLUDE.finditer(text)]


def dependencies(source, source_dir, headers, include_dirs, pre_includes=()):
    """All files `source` (str) includes, transitively, in a stable order: a list of
    (include name, resolved path or "<memory>" or None if not found, content bytes or b"").

    source_dir: where quoted includes of the main source are looked up first (None: nowhere);
    headers: {name: text} in-memory headers (NVRTC matches these by include name first);
    include_dirs: the -I directories in order."""
    headers = headers or {}
    out, seen = [], set()
    # Work list of (quote, name, directory of the including file).
    todo = [(b'"', name, source_dir) for name in pre_includes]
    todo += [(q, n, source_dir) for q, n in _parse(source.encode())]
    todo.reverse()  # a stack: the first include is handled first
    while todo:
        quote, name, inc_dir = todo.pop()
        resolved, content, children, child_dir = None, b"", [], None
        if name in headers:
            resolved, content = "<memory>", headers[name].encode()
            children = _parse(content)
        else:
            dirs = ([inc_dir] if quote == b'"' and inc_dir else []) + list(include_dirs)
            for d in dirs:
                path = os.path.normpath(os.path.join(d, name))
                if os.path.isfile(path):
                    resolved = path
                    content, children = _read(path)
                    child_dir = os.path.dirname(path)
                    break
        ident = (name, resolved)
        if ident in seen:
            continue
        seen.add(ident)
        out.append((name, resolved, content))
        for q, n in reversed(children):
            todo.append((q, n, child_dir))
    return out
