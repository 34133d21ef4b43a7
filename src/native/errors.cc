#include "errors.h"

#include <cstring>

namespace coriolis {

std::string ErrnoName(int err) {
  const char* name = strerrorname_np(err);
  return name != nullptr ? std::string(name) : "E" + std::to_string(err);
}

Napi::Error ErrnoError(Napi::Env env, int err, const std::string& syscall,
                       const std::string& path) {
  std::string message = syscall;
  if (!path.empty()) message += " " + path;
  message += ": " + std::string(strerror(err)) + " (" + ErrnoName(err) + ")";
  Napi::Error error = Napi::Error::New(env, message);
  error.Set("code", Napi::String::New(env, ErrnoName(err)));
  error.Set("errno", Napi::Number::New(env, err));
  error.Set("syscall", Napi::String::New(env, syscall));
  if (!path.empty()) error.Set("path", Napi::String::New(env, path));
  return error;
}

}  // namespace coriolis
