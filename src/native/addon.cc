// Entry point of the native addon: each method group registers its own functions.
#include <napi.h>

namespace coriolis {
void InitReader(Napi::Env env, Napi::Object exports);
void InitBlockdev(Napi::Env env, Napi::Object exports);
void InitVeeamsnap(Napi::Env env, Napi::Object exports);
void InitSnapstorePipe(Napi::Env env, Napi::Object exports);
void InitProcess(Napi::Env env, Napi::Object exports);
void InitBlksnap(Napi::Env env, Napi::Object exports);
}  // namespace coriolis

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  coriolis::InitReader(env, exports);
  coriolis::InitBlockdev(env, exports);
  coriolis::InitVeeamsnap(env, exports);
  coriolis::InitSnapstorePipe(env, exports);
  coriolis::InitProcess(env, exports);
  coriolis::InitBlksnap(env, exports);
  return exports;
}

NODE_API_MODULE(coriolis_native, Init)
