// The snapstore pipe: a dedicated fd of the control device per stretch snapstore. Commands go
// out with write(); events come back one per read(). That read() blocks even on an O_NONBLOCK
// fd and poll/epoll are never woken (spec §4.5), so each pipe gets its own reader thread that
// forwards events to JavaScript through a ThreadSafeFunction, and is stopped by a signal.
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "errors.h"
#include "syscall_support.h"
#include "veeamsnap_abi.h"

namespace coriolis::veeamsnap {
namespace {

// A private real-time signal (nothing in Node uses them) whose handler does nothing and is
// installed without SA_RESTART: sent to a reader thread, it makes a blocked read() fail with
// EINTR instead of being restarted.
int WakeSignal() { return SIGRTMIN + 6; }

void IgnoreWake(int) {}

void InstallWakeHandler(Napi::Env env) {
  static std::once_flag once;
  static bool taken = false;
  std::call_once(once, [] {
    struct sigaction old {};
    sigaction(WakeSignal(), nullptr, &old);
    // Someone else's handler on this signal would be clobbered, and theirs would restart reads.
    if ((old.sa_flags & SA_SIGINFO) != 0 || (old.sa_handler != SIG_DFL && old.sa_handler != SIG_IGN)) {
      taken = true;
      return;
    }
    struct sigaction action {};
    action.sa_handler = IgnoreWake;
    sigemptyset(&action.sa_mask);
    action.sa_flags = 0;  // no SA_RESTART
    sigaction(WakeSignal(), &action, nullptr);
  });
  if (taken) {
    throw Napi::Error::New(env, "signal " + std::to_string(WakeSignal()) +
                                    " already has a handler; the snapstore pipe reader needs it");
  }
}

// What one read() produced, carried to the JS thread.
struct ReaderMessage {
  uint8_t bytes[kEventReadBuffer];
  ssize_t length;  // > 0: one event; 0: end of file; < 0: read() failed with `err`
  int err;
  std::string path;
};

void Deliver(Napi::Env env, Napi::Function callback, std::nullptr_t*, ReaderMessage* data) {
  std::unique_ptr<ReaderMessage> msg(data);
  if (env == nullptr) return;  // the environment is shutting down
  if (msg->length > 0) {
    callback.Call({env.Null(), DecodePipeEvent(env, msg->bytes, static_cast<size_t>(msg->length))});
  } else if (msg->length == 0) {  // not from the module (its read never returns 0); a FIFO's writer left
    Napi::Error error = Napi::Error::New(env, "read " + msg->path + ": unexpected end of file");
    error.Set("code", "EOF");
    error.Set("syscall", "read");
    error.Set("path", msg->path);
    callback.Call({error.Value()});
  } else {
    callback.Call({ErrnoError(env, msg->err, "read", msg->path).Value()});
  }
}

using ReaderTsfn = Napi::TypedThreadSafeFunction<std::nullptr_t, ReaderMessage, Deliver>;

// The thread that reads one pipe. It ends on Stop(), or after reporting a failed read or EOF.
class Reader {
 public:
  Reader(std::shared_ptr<Fd> fd, std::string path, ReaderTsfn tsfn)
      : fd_(std::move(fd)), path_(std::move(path)), tsfn_(tsfn), thread_(&Reader::Loop, this) {}

  // The thread holds no reference to this object, so it is never destroyed from there.
  ~Reader() { Stop(); }

  // From any thread but the reader's. The signal may land after the stop flag was checked but
  // before read() is entered, and then read() blocks: so keep sending it, briefly apart, until
  // the thread says it has left the loop.
  void Stop() {
    if (!thread_.joinable()) return;
    stop_.store(true);
    {
      std::unique_lock<std::mutex> lock(mutex_);
      while (!done_) {
        pthread_kill(thread_.native_handle(), WakeSignal());  // alive: done_ is not set yet
        stopped_.wait_for(lock, std::chrono::milliseconds(1));
      }
    }
    thread_.join();
  }

 private:
  void Loop() {
    sigset_t wake;
    sigemptyset(&wake);
    sigaddset(&wake, WakeSignal());
    pthread_sigmask(SIG_UNBLOCK, &wake, nullptr);
    while (!stop_.load()) {
      auto msg = std::make_unique<ReaderMessage>();
      msg->length = ::read(fd_->fd, msg->bytes, sizeof msg->bytes);
      if (msg->length < 0 && errno == EINTR) continue;  // woken by Stop() (or a stray signal)
      msg->err = msg->length < 0 ? errno : 0;
      msg->path = path_;
      bool last = msg->length <= 0;
      if (tsfn_.NonBlockingCall(msg.get()) == napi_ok) msg.release();  // unlimited queue
      if (last) break;
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      done_ = true;
    }
    stopped_.notify_all();
    tsfn_.Release();  // lets the event loop exit once queued events are delivered
  }

  std::shared_ptr<Fd> fd_;
  std::string path_;
  ReaderTsfn tsfn_;
  std::atomic<bool> stop_{false};
  std::mutex mutex_;
  std::condition_variable stopped_;
  bool done_ = false;
  std::thread thread_;  // last: starts once everything above is initialised
};

// new SnapstorePipeHandle(path, onEvent(err, event)); open(): Promise<void> (starts the
// reader); write(name, args): Promise<{written, length}>; close(): Promise<void> (stops and
// joins the reader; the fd closes when no write is in flight).
class PipeHandle : public Napi::ObjectWrap<PipeHandle> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "SnapstorePipeHandle",
                       {InstanceMethod("open", &PipeHandle::Open), InstanceMethod("write", &PipeHandle::Write),
                        InstanceMethod("close", &PipeHandle::Close)});
  }

  explicit PipeHandle(const Napi::CallbackInfo& info) : Napi::ObjectWrap<PipeHandle>(info) {
    if (!info[0].IsString()) throw Napi::TypeError::New(info.Env(), "path must be a string");
    if (!info[1].IsFunction()) throw Napi::TypeError::New(info.Env(), "onEvent must be a function");
    path_ = info[0].As<Napi::String>();
    onEvent_ = Napi::Persistent(info[1].As<Napi::Function>());
  }

 private:
  Napi::Value Open(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (fd_) throw Napi::Error::New(env, "the snapstore pipe is already open");
    auto opened = std::make_shared<std::shared_ptr<Fd>>();
    // Keeps this object alive until the open completes.
    auto self = std::make_shared<Napi::ObjectReference>(Napi::Persistent(Value()));
    std::string path = path_;
    return QueueSyscall(
        env, "open", path_,
        [opened, path] {
          int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
          if (fd < 0) return errno;
          *opened = std::make_shared<Fd>(fd);
          return 0;
        },
        [this, self, opened](Napi::Env env) {
          InstallWakeHandler(env);  // before any thread could be sent the signal
          fd_ = *opened;
          reader_ = std::make_shared<Reader>(
              fd_, path_, ReaderTsfn::New(env, onEvent_.Value(), "coriolis:snapstore-pipe", 0, 1));
          return env.Undefined();
        });
  }

  Napi::Value Write(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!info[0].IsString()) throw Napi::TypeError::New(env, "name must be a string");
    if (!info[1].IsObject()) throw Napi::TypeError::New(env, "args must be an object");
    std::string name = info[0].As<Napi::String>();
    auto message = std::make_shared<std::vector<uint8_t>>(EncodePipeCommand(env, name, info[1].As<Napi::Object>()));
    auto written = std::make_shared<ssize_t>(0);
    std::shared_ptr<Fd> fd = fd_;
    return QueueSyscall(
        env, name, path_,
        [fd, message, written] {
          if (!fd) return EBADF;
          // One command per write(): the module parses only the first.
          *written = ::write(fd->fd, message->data(), message->size());
          return *written < 0 ? errno : 0;
        },
        [message, written](Napi::Env env) {
          Napi::Object result = Napi::Object::New(env);
          result.Set("written", Napi::Number::New(env, static_cast<double>(*written)));
          result.Set("length", Napi::Number::New(env, static_cast<double>(message->size())));
          return result;
        });
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    std::shared_ptr<Reader> reader = std::move(reader_);
    fd_.reset();
    return QueueSyscall(
        info.Env(), "close", path_,
        [reader] {
          if (reader) reader->Stop();
          return 0;
        },
        [](Napi::Env env) { return env.Undefined(); });
  }

  std::string path_;
  Napi::FunctionReference onEvent_;
  std::shared_ptr<Fd> fd_;  // JS thread only; the reader and writes in flight hold their own
  std::shared_ptr<Reader> reader_;
};

// snapstorePipeDecodeEvent(bytes): the event object one read() of these bytes yields.
Napi::Value DecodeEvent(const Napi::CallbackInfo& info) {
  if (!info[0].IsBuffer()) throw Napi::TypeError::New(info.Env(), "bytes must be a Buffer");
  Napi::Buffer<uint8_t> bytes = info[0].As<Napi::Buffer<uint8_t>>();
  return DecodePipeEvent(info.Env(), bytes.Data(), bytes.Length());
}

}  // namespace
}  // namespace coriolis::veeamsnap

namespace coriolis {
void InitSnapstorePipe(Napi::Env env, Napi::Object exports) {
  exports.Set("SnapstorePipeHandle", veeamsnap::PipeHandle::Define(env));
  exports.Set("snapstorePipeDecodeEvent", Napi::Function::New(env, veeamsnap::DecodeEvent, "snapstorePipeDecodeEvent"));
}
}  // namespace coriolis
