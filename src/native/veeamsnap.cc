#include <napi.h>

namespace coriolis {
void InitVeeamsnap(Napi::Env, Napi::Object) {}
}  // namespace coriolis
