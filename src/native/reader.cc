#include <napi.h>

namespace coriolis {
void InitReader(Napi::Env, Napi::Object) {}
}  // namespace coriolis
