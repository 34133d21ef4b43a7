// Helpers shared by every method group: argument conversion, and the one worker that runs
// blocking syscalls on the libuv pool and settles a promise on the JavaScript thread.
#pragma once
#include <napi.h>

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <unistd.h>
#include <utility>

#include "errors.h"

namespace coriolis {

// TypeScript validates arguments with clear messages first; this only keeps a misused raw
// binding from turning garbage (negative, fractional, NaN) into sizes and offsets.
inline uint64_t ToSafeUint64(const Napi::Value& value, const char* name) {
  double number = value.IsNumber() ? value.As<Napi::Number>().DoubleValue() : -1;
  if (!(number >= 0 && number <= 9007199254740991.0 && std::floor(number) == number)) {
    throw Napi::TypeError::New(value.Env(), std::string(name) + " must be a non-negative safe integer");
  }
  return static_cast<uint64_t>(number);
}

inline std::string ToPath(const Napi::CallbackInfo& info, size_t index) {
  if (info.Length() <= index || !info[index].IsString()) {
    throw Napi::TypeError::New(info.Env(), "path must be a string");
  }
  return info[index].As<Napi::String>().Utf8Value();
}

// Retries a syscall interrupted by a signal before it did anything.
template <typename Syscall>
auto RetryOnEintr(Syscall syscall) -> decltype(syscall()) {
  decltype(syscall()) result;
  do {
    result = syscall();
  } while (result == -1 && errno == EINTR);
  return result;
}

// Execute() runs off the event loop and reports a failure with Fail(errno, "syscall"); on the
// JavaScript thread the promise is then rejected with an ErrnoError, or resolved with Result().
class SyscallWorker : public Napi::AsyncWorker {
 public:
  SyscallWorker(Napi::Env env, const char* resourceName, std::string path)
      : Napi::AsyncWorker(env, resourceName),
        path_(std::move(path)),
        deferred_(Napi::Promise::Deferred::New(env)) {}

  Napi::Promise Promise() const { return deferred_.Promise(); }

 protected:
  // Keeps the first failure: later ones are usually cleanup after it.
  void Fail(int err, const char* syscall) {
    if (error_ != 0) return;
    error_ = err;
    syscall_ = syscall;
  }
  bool Failed() const { return error_ != 0; }
  virtual Napi::Value Result(Napi::Env env) = 0;

  const std::string path_;

 private:
  void OnOK() override {
    Napi::Env env = Env();
    if (error_ != 0) {
      deferred_.Reject(ErrnoError(env, error_, syscall_, path_).Value());
      return;
    }
    try {
      deferred_.Resolve(Result(env));
    } catch (const Napi::Error& e) {
      deferred_.Reject(e.Value());
    }
  }

  Napi::Promise::Deferred deferred_;
  int error_ = 0;
  const char* syscall_ = "";
};

// An open descriptor shared by everything that may still use it: close() only drops the
// owner's reference, so a call in flight never sees the number reused by another open().
struct Fd {
  explicit Fd(int n) : fd(n) {}
  ~Fd() { ::close(fd); }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  const int fd;
};

// A SyscallWorker made of two functions: `work` (off the event loop; 0 or an errno) and `done`
// (on the JavaScript thread; the value the promise resolves with).
class FunctionWorker : public SyscallWorker {
 public:
  FunctionWorker(Napi::Env env, std::string syscall, std::string path, std::function<int()> work,
                 std::function<Napi::Value(Napi::Env)> done)
      : SyscallWorker(env, "coriolis:syscall", std::move(path)),
        name_(std::move(syscall)),
        work_(std::move(work)),
        done_(std::move(done)) {}

 protected:
  void Execute() override {
    int err = work_();
    if (err != 0) Fail(err, name_.c_str());
  }
  Napi::Value Result(Napi::Env env) override { return done_(env); }

 private:
  const std::string name_;
  std::function<int()> work_;
  std::function<Napi::Value(Napi::Env)> done_;
};

// Runs `work` on the libuv pool. The promise rejects with ErrnoError(errno, syscall, path), or
// resolves with `done(env)` (a JS exception it throws rejects the promise too).
inline Napi::Promise QueueSyscall(Napi::Env env, std::string syscall, std::string path, std::function<int()> work,
                                  std::function<Napi::Value(Napi::Env)> done) {
  auto* worker = new FunctionWorker(env, std::move(syscall), std::move(path), std::move(work), std::move(done));
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

}  // namespace coriolis
