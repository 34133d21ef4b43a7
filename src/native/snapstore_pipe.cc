#include <napi.h>

namespace coriolis {
void InitSnapstorePipe(Napi::Env, Napi::Object) {}
}  // namespace coriolis
