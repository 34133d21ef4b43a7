// One way to turn a failed syscall into a JavaScript error: every error the addon raises
// carries `code` (the errno name), `errno` (the number) and `syscall` (what failed), so
// TypeScript can decide what to do without parsing messages.
#pragma once
#include <napi.h>
#include <string>

namespace coriolis {

// Builds an Error like Node's own system errors: "<syscall> <path>: <strerror> (<CODE>)".
Napi::Error ErrnoError(Napi::Env env, int err, const std::string& syscall,
                       const std::string& path = "");

// The symbolic errno name, e.g. "ENOENT"; "E<number>" when the libc has no name for it.
std::string ErrnoName(int err);

}  // namespace coriolis
