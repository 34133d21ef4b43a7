#include <napi.h>

namespace coriolis {
void InitBlockdev(Napi::Env, Napi::Object) {}
}  // namespace coriolis
