// Direct (O_DIRECT) reader: reads any byte range of a block device or regular file through the
// aligned span that covers it, on dedicated I/O threads, and gives JavaScript a window into
// pooled aligned memory instead of a copy. It can also summarise a range instead (digest():
// whether it is all zeros, else its SHA-256), on the same threads, so that the bytes never
// reach JavaScript and hashing never runs on the event loop.
#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <napi.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <system_error>
#include <thread>
#include <unordered_map>
#include <vector>

#include "buffer_pool.h"
#include "device_geometry.h"
#include "errors.h"
#include "syscall_support.h"

namespace coriolis {
namespace {

class CompletionChannel;
class DirectReaderHandle;

struct ReadRequest {
  ReadRequest(Napi::Env env, DirectReaderHandle* reader, std::shared_ptr<CompletionChannel> channel)
      : reader(reader), channel(std::move(channel)), deferred(Napi::Promise::Deferred::New(env)) {}

  DirectReaderHandle* const reader;  // pinned by its Ref() while it has reads in flight
  const std::shared_ptr<CompletionChannel> channel;
  const Napi::Promise::Deferred deferred;  // touched on the JavaScript thread only
  int fd = -1;
  uint64_t alignment = 0;
  uint64_t spanStart = 0;
  size_t spanLength = 0;
  size_t skew = 0;  // from spanStart to the first byte asked for
  size_t length = 0;
  AlignedChunk chunk;
  // digest(): summarise the bytes instead of handing them over.
  bool summarise = false;
  // Results, written by the I/O thread.
  size_t bytesRead = 0;
  int error = 0;
  bool zero = false;
  unsigned char sha256[32] = {};
};

void DeliverRead(Napi::Env env, Napi::Function, CompletionChannel*, ReadRequest* request);
using CompletionFunction =
    Napi::TypedThreadSafeFunction<CompletionChannel, ReadRequest, DeliverRead>;

// Carries finished reads from the I/O threads back to one JavaScript environment. It keeps the
// event loop alive only while reads are in flight, and outlives the environment so that an I/O
// thread finishing after it shut down finds it closed rather than freed.
class CompletionChannel {
 public:
  static std::shared_ptr<CompletionChannel>* CreateForEnvironment(Napi::Env env) {
    auto* environmentShare = new std::shared_ptr<CompletionChannel>(new CompletionChannel());
    CompletionChannel* channel = environmentShare->get();
    // The finalizer runs when the environment shuts down.
    channel->function_ = CompletionFunction::New(
        env, "coriolis:directRead", 0, 1, channel,
        [](Napi::Env, std::shared_ptr<CompletionChannel>* share, CompletionChannel*) {
          (*share)->Shutdown();
          delete share;
        },
        environmentShare);
    channel->function_.Unref(env);
    return environmentShare;
  }

  void ReadStarted(Napi::Env env) {
    if (readsInFlight_++ == 0) function_.Ref(env);
  }
  void ReadFinished(Napi::Env env) {
    if (--readsInFlight_ == 0) function_.Unref(env);
  }

  // Called on I/O threads. False once the environment is gone: the request stays the caller's.
  bool Post(ReadRequest* request) {
    std::lock_guard<std::mutex> lock(mutex_);
    return open_ && function_.NonBlockingCall(request) == napi_ok;
  }

 private:
  CompletionChannel() = default;

  void Shutdown() {
    std::lock_guard<std::mutex> lock(mutex_);
    open_ = false;
  }

  CompletionFunction function_;
  size_t readsInFlight_ = 0;  // JavaScript thread only
  std::mutex mutex_;
  bool open_ = true;
};

// memcmp against a zeroed page: libc's vectorised compare, leaving at the first other byte.
bool AllZero(const uint8_t* data, size_t length) {
  static const uint8_t kZeros[64 * 1024] = {};
  for (size_t done = 0; done < length; done += sizeof kZeros) {
    const size_t n = std::min(sizeof kZeros, length - done);
    if (std::memcmp(data + done, kZeros, n) != 0) return false;
  }
  return true;
}

// A zero range needs no hash (JavaScript knows the digest of zeros); any other gets SHA-256.
void Summarise(ReadRequest* request) {
  const uint8_t* data = request->chunk.data + request->skew;
  request->zero = AllZero(data, request->length);
  if (request->zero) return;
  unsigned int size = 0;
  if (EVP_Digest(data, request->length, request->sha256, &size, EVP_sha256(), nullptr) != 1 || size != 32) {
    request->error = EIO;
  }
}

// Reads the span, looping over short preads. Under O_DIRECT a pread stops short of the span only
// where the data ends (a file whose size is not a multiple of the block size), and the next one
// would start unaligned, so an unaligned total ends the loop.
void PerformRead(ReadRequest* request) {
  size_t done = 0;
  while (done < request->spanLength) {
    const ssize_t n = pread(request->fd, request->chunk.data + done, request->spanLength - done,
                            static_cast<off_t>(request->spanStart + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      request->error = errno;
      break;
    }
    if (n == 0) break;
    done += static_cast<size_t>(n);
    if (done % request->alignment != 0) break;
  }
  request->bytesRead = done;
  if (request->summarise && request->error == 0 && done >= request->skew + request->length) Summarise(request);
  if (!request->channel->Post(request)) {
    BufferPool::Instance().Release(request->chunk);
    delete request;
  }
}

// From <linux/ioprio.h> (ioprio_set(2)), which C++ cannot include: it names a parameter `class`.
constexpr int IOPRIO_WHO_PROCESS = 1;
constexpr int IOPRIO_CLASS_SHIFT = 13;
constexpr int IOPRIO_CLASS_NONE = 0;
constexpr int IOPRIO_CLASS_BE = 2;
constexpr int IOPRIO_CLASS_IDLE = 3;
constexpr uint64_t IOPRIO_NR_CLASSES = 8;
constexpr uint64_t IOPRIO_NR_LEVELS = 8;

// glibc has no wrapper for ioprio_set(2).
int SetThreadIoPriority(pid_t tid, int ioPriority) {
  return static_cast<int>(syscall(SYS_ioprio_set, IOPRIO_WHO_PROCESS, tid, ioPriority));
}

// Dedicated threads for the blocking preads: the libuv pool (4 threads by default) is shared with
// fs, dns and zlib work, and its size would cap the reads in flight. Every thread runs at the I/O
// priority last set, so the disk can favour the machine's own workload over the agent's reads.
class IoThreadPool {
 public:
  static constexpr size_t kDefaultThreads = 8;

  // Never destroyed: detached threads may still be finishing reads while the process exits.
  static IoThreadPool& Instance() {
    static IoThreadPool* pool = new IoThreadPool();
    return *pool;
  }

  // Returns 0 or an errno value when no thread could be started.
  int Submit(ReadRequest* request) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (target_ == 0) {
        const int err = ResizeLocked(kDefaultThreads);
        if (running_ == 0) return err;
      }
      queue_.push_back(request);
    }
    wake_.notify_one();
    return 0;
  }

  // Surplus threads leave when they are next idle. Returns 0 or an errno value.
  int Resize(size_t threads) {
    int err;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      err = ResizeLocked(threads);
    }
    wake_.notify_all();
    return err;
  }

  // Starts the threads if none run yet and sets the I/O priority of each of them; once every one
  // took it, threads started later take it too. Returns 0 or the errno value of a refusal.
  int SetIoPriority(int ioPriority) {
    std::unique_lock<std::mutex> lock(mutex_);
    if (target_ == 0) {
      const int err = ResizeLocked(kDefaultThreads);
      if (running_ == 0) return err;
    }
    // Threads just started register within moments, before their first read.
    registered_.wait(lock, [this] { return threadIds_.size() == running_; });
    for (const pid_t tid : threadIds_) {
      if (SetThreadIoPriority(tid, ioPriority) != 0) return errno;
    }
    ioPriority_ = ioPriority;
    return 0;
  }

  std::vector<pid_t> ThreadIds() {
    std::lock_guard<std::mutex> lock(mutex_);
    return std::vector<pid_t>(threadIds_.begin(), threadIds_.end());
  }

 private:
  IoThreadPool() = default;

  int ResizeLocked(size_t threads) {
    target_ = threads;
    while (running_ < target_) {
      try {
        std::thread(&IoThreadPool::Run, this).detach();
      } catch (const std::system_error& e) {
        target_ = running_;
        return e.code().value();
      }
      running_++;
    }
    return 0;
  }

  void Run() {
    const pid_t tid = gettid();
    std::unique_lock<std::mutex> lock(mutex_);
    threadIds_.insert(tid);
    // The value SetIoPriority already applied to the other threads: it cannot be refused here.
    if (ioPriority_ >= 0) SetThreadIoPriority(tid, ioPriority_);
    registered_.notify_all();
    for (;;) {
      wake_.wait(lock, [this] { return !queue_.empty() || running_ > target_; });
      // Unregistered under the lock, so SetIoPriority never meets the id of an exited thread.
      if (running_ > target_) {
        threadIds_.erase(tid);
        running_--;
        return;
      }
      ReadRequest* request = queue_.front();
      queue_.pop_front();
      lock.unlock();
      PerformRead(request);
      lock.lock();
    }
  }

  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable registered_;
  std::deque<ReadRequest*> queue_;
  size_t running_ = 0;
  size_t target_ = 0;
  std::set<pid_t> threadIds_;
  int ioPriority_ = -1;  // never set: the threads keep the process's own
};

// The chunks behind buffers JavaScript holds. A chunk goes back to the pool when its buffer is
// collected or, sooner, when JavaScript recycles the buffer: recycling empties the buffer first,
// so a late use of it sees no bytes rather than another read's. Returning chunks without waiting
// for the garbage collector keeps V8 from running a full collection every few dozen megabytes of
// external memory while a download streams.
struct LiveChunk {
  AlignedChunk chunk;
  bool returned = false;  // guarded by LiveChunks' mutex
};

class LiveChunks {
 public:
  static LiveChunks& Instance() {
    static LiveChunks* chunks = new LiveChunks();  // finalizers may run during exit
    return *chunks;
  }

  LiveChunk* Add(uint8_t* view, AlignedChunk chunk) {
    auto* live = new LiveChunk{chunk};
    std::lock_guard<std::mutex> lock(mutex_);
    byView_[view] = live;
    return live;
  }

  // The buffer's finalizer: the last word on `live`, recycled or not.
  void Collected(uint8_t* view, LiveChunk* live) {
    bool release = false;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!live->returned) {
        live->returned = true;
        release = true;
        byView_.erase(view);
      }
    }
    if (release) BufferPool::Instance().Release(live->chunk);
    delete live;
  }

  // Takes the chunk behind `view` out of JavaScript's hands; false if `view` is not one of ours.
  bool Take(uint8_t* view, AlignedChunk* chunk) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto found = byView_.find(view);
    if (found == byView_.end()) return false;
    found->second->returned = true;
    *chunk = found->second->chunk;
    byView_.erase(found);
    return true;
  }

 private:
  LiveChunks() = default;

  std::mutex mutex_;
  // A view address is unique among live buffers: each has a chunk of its own.
  std::unordered_map<uint8_t*, LiveChunk*> byView_;
};

// recycleReadBuffer(buffer): true if the buffer came from read() and its chunk is back in the
// pool; the buffer (and every view of its memory) is then empty.
Napi::Value RecycleReadBuffer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsTypedArray()) throw Napi::TypeError::New(env, "recycleReadBuffer needs a Buffer");
  Napi::TypedArray view = info[0].As<Napi::TypedArray>();
  Napi::ArrayBuffer memory = view.ArrayBuffer();
  if (memory.IsDetached() || view.ByteOffset() != 0) return Napi::Boolean::New(env, false);
  AlignedChunk chunk;
  if (!LiveChunks::Instance().Take(static_cast<uint8_t*>(memory.Data()), &chunk)) {
    return Napi::Boolean::New(env, false);
  }
  // Detached before the chunk can be handed to another read.
  memory.Detach();
  BufferPool::Instance().Release(chunk);
  return Napi::Boolean::New(env, true);
}

Napi::Error ReaderError(Napi::Env env, const std::string& message, const char* code) {
  Napi::Error error = Napi::Error::New(env, message);
  error.Set("code", Napi::String::New(env, code));
  return error;
}

class DirectReaderHandle : public Napi::ObjectWrap<DirectReaderHandle> {
 public:
  static Napi::Function Define(Napi::Env env, std::shared_ptr<CompletionChannel>* channel) {
    return DefineClass(env, "DirectReaderHandle",
                       {InstanceMethod<&DirectReaderHandle::Open>("open"),
                        InstanceMethod<&DirectReaderHandle::Read>("read"),
                        InstanceMethod<&DirectReaderHandle::Digest>("digest"),
                        InstanceMethod<&DirectReaderHandle::Close>("close")},
                       channel);
  }

  explicit DirectReaderHandle(const Napi::CallbackInfo& info)
      : Napi::ObjectWrap<DirectReaderHandle>(info),
        path_(ToPath(info, 0)),
        channel_(*static_cast<std::shared_ptr<CompletionChannel>*>(info.Data())) {}

  // Dropped without close(): no read is in flight (each pins the handle), so nothing uses the fd.
  ~DirectReaderHandle() override {
    if (fd_ >= 0) close(fd_);
  }

  void FinishRead(Napi::Env env, std::unique_ptr<ReadRequest> request) {
    channel_->ReadFinished(env);
    const bool drained = --readsInFlight_ == 0;
    if (request->error != 0) {
      BufferPool::Instance().Release(request->chunk);
      request->deferred.Reject(ErrnoError(env, request->error, "pread", path_).Value());
    } else if (request->bytesRead < request->skew + request->length) {
      BufferPool::Instance().Release(request->chunk);
      const uint64_t offset = request->spanStart + request->skew;
      request->deferred.Reject(
          ReaderError(env,
                      "read " + path_ + ": the data ends at byte " +
                          std::to_string(request->spanStart + request->bytesRead) +
                          ", inside the requested range [" + std::to_string(offset) + ", " +
                          std::to_string(offset + request->length) + ")",
                      "ERANGE")
              .Value());
    } else if (request->summarise) {
      BufferPool::Instance().Release(request->chunk);
      Napi::Object summary = Napi::Object::New(env);
      summary.Set("zero", request->zero);
      summary.Set("sha256", request->zero ? env.Null() : Napi::Value(Napi::Buffer<uint8_t>::Copy(env, request->sha256, 32)));
      request->deferred.Resolve(summary);
    } else {
      uint8_t* const view = request->chunk.data + request->skew;
      LiveChunk* live = LiveChunks::Instance().Add(view, request->chunk);
      request->deferred.Resolve(Napi::Buffer<uint8_t>::New(
          env, view, request->length,
          [](Napi::Env, uint8_t* data, LiveChunk* collected) {
            LiveChunks::Instance().Collected(data, collected);
          },
          live));
    }
    if (drained) {
      if (pendingClose_ != nullptr) {
        pendingClose_->Queue();
        pendingClose_ = nullptr;
      }
      Unref();  // last: the handle may be collected from here on
    }
  }

 private:
  enum class State { kNew, kOpening, kOpen, kClosed };

  void Opened(int fd, const DeviceGeometry& geometry) {
    fd_ = fd;
    geometry_ = geometry;
    state_ = State::kOpen;
  }

  class OpenWorker : public SyscallWorker {
   public:
    OpenWorker(Napi::Env env, DirectReaderHandle* reader, const std::string& path)
        : SyscallWorker(env, "coriolis:directReaderOpen", path),
          reader_(reader),
          keepAlive_(Napi::Persistent(reader->Value())) {}

   private:
    // O_DIRECT is switched on only after the type check, so that a directory fails with EISDIR
    // rather than EINVAL; O_NONBLOCK only keeps a FIFO given by mistake from hanging the open.
    void Execute() override {
      fd_ = RetryOnEintr([&] { return open(path_.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK); });
      if (fd_ < 0) return Fail(errno, "open");
      const char* failedSyscall = "";
      const int err = DescribeOpenFile(fd_, &geometry_, &failedSyscall);
      if (err != 0) {
        Fail(err, failedSyscall);
      } else if (fcntl(fd_, F_SETFL, O_DIRECT) != 0) {
        Fail(errno, "fcntl(F_SETFL, O_DIRECT)");
      }
      if (Failed()) {
        close(fd_);
        fd_ = -1;
      }
    }

    Napi::Value Result(Napi::Env env) override {
      reader_->Opened(fd_, geometry_);
      return GeometryToObject(env, geometry_);
    }

    DirectReaderHandle* const reader_;
    const Napi::ObjectReference keepAlive_;
    int fd_ = -1;
    DeviceGeometry geometry_;
  };

  class CloseWorker : public SyscallWorker {
   public:
    CloseWorker(Napi::Env env, const std::string& path, int fd)
        : SyscallWorker(env, "coriolis:directReaderClose", path), fd_(fd) {}

   private:
    // Not retried on EINTR: Linux releases the descriptor whatever close() returns.
    void Execute() override {
      if (close(fd_) != 0) Fail(errno, "close");
    }
    Napi::Value Result(Napi::Env env) override { return env.Undefined(); }

    const int fd_;
  };

  Napi::Value Open(const Napi::CallbackInfo& info) {
    if (state_ != State::kNew) throw Napi::Error::New(info.Env(), "open() may be called once");
    state_ = State::kOpening;
    auto* worker = new OpenWorker(info.Env(), this, path_);
    worker->Queue();
    return worker->Promise();
  }

  Napi::Value Read(const Napi::CallbackInfo& info) { return Submit(info, false); }

  // {zero: boolean, sha256: Buffer | null}: whether [offset, offset + length) is all zeros, and
  // if not its SHA-256.
  Napi::Value Digest(const Napi::CallbackInfo& info) { return Submit(info, true); }

  Napi::Value Submit(const Napi::CallbackInfo& info, bool summarise) {
    Napi::Env env = info.Env();
    const uint64_t offset = ToSafeUint64(info[0], "offset");
    const uint64_t length = ToSafeUint64(info[1], "length");
    if (state_ != State::kOpen) {
      return Rejected(env, ReaderError(env, "read " + path_ + ": the reader is " +
                                                (state_ == State::kClosed ? "closed" : "not open"),
                                       "ESHUTDOWN"));
    }
    // A safety net against allocating for an impossible range; TypeScript explains the limits.
    if (offset > geometry_.size || length > geometry_.size - offset) {
      throw Napi::RangeError::New(env, "read range ends past the end of " + path_);
    }
    if (length == 0) {
      if (summarise) throw Napi::RangeError::New(env, "digest of an empty range");
      auto deferred = Napi::Promise::Deferred::New(env);
      deferred.Resolve(Napi::Buffer<uint8_t>::New(env, 0));
      return deferred.Promise();
    }

    auto request = std::make_unique<ReadRequest>(env, this, channel_);
    request->summarise = summarise;
    const uint64_t alignment = geometry_.logicalBlockSize;
    request->fd = fd_;
    request->alignment = alignment;
    request->spanStart = offset / alignment * alignment;
    request->spanLength = (offset + length + alignment - 1) / alignment * alignment - request->spanStart;
    request->skew = offset - request->spanStart;
    request->length = length;
    int err = BufferPool::Instance().Acquire(request->spanLength, &request->chunk);
    if (err != 0) return Rejected(env, ErrnoError(env, err, "posix_memalign", path_));
    err = IoThreadPool::Instance().Submit(request.get());
    if (err != 0) {
      BufferPool::Instance().Release(request->chunk);
      return Rejected(env, ErrnoError(env, err, "pthread_create", path_));
    }
    if (readsInFlight_++ == 0) Ref();
    channel_->ReadStarted(env);
    return request.release()->deferred.Promise();
  }

  // Reads already in flight finish first; the descriptor is closed after the last of them.
  Napi::Value Close(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (state_ != State::kOpen) throw Napi::Error::New(env, "close() needs an open reader, once");
    state_ = State::kClosed;
    auto* worker = new CloseWorker(env, path_, fd_);
    fd_ = -1;
    if (readsInFlight_ == 0) {
      worker->Queue();
    } else {
      pendingClose_ = worker;
    }
    return worker->Promise();
  }

  static Napi::Promise Rejected(Napi::Env env, const Napi::Error& error) {
    auto deferred = Napi::Promise::Deferred::New(env);
    deferred.Reject(error.Value());
    return deferred.Promise();
  }

  const std::string path_;
  const std::shared_ptr<CompletionChannel> channel_;
  State state_ = State::kNew;
  int fd_ = -1;
  DeviceGeometry geometry_;
  size_t readsInFlight_ = 0;
  CloseWorker* pendingClose_ = nullptr;
};

void DeliverRead(Napi::Env env, Napi::Function, CompletionChannel*, ReadRequest* request) {
  // A null environment means it is shutting down: JavaScript can no longer be told.
  if (env == nullptr) {
    BufferPool::Instance().Release(request->chunk);
    delete request;
    return;
  }
  request->reader->FinishRead(env, std::unique_ptr<ReadRequest>(request));
}

Napi::Value ReaderPoolStats(const Napi::CallbackInfo& info) {
  const BufferPoolStats stats = BufferPool::Instance().Stats();
  Napi::Object result = Napi::Object::New(info.Env());
  result.Set("buffersInUse", static_cast<double>(stats.buffersInUse));
  result.Set("bytesInUse", static_cast<double>(stats.bytesInUse));
  result.Set("buffersPooled", static_cast<double>(stats.buffersPooled));
  result.Set("bytesPooled", static_cast<double>(stats.bytesPooled));
  return result;
}

void SetReaderIoThreads(const Napi::CallbackInfo& info) {
  const uint64_t threads = ToSafeUint64(info[0], "threads");
  if (threads == 0) throw Napi::RangeError::New(info.Env(), "threads must be at least 1");
  const int err = IoThreadPool::Instance().Resize(threads);
  if (err != 0) throw ErrnoError(info.Env(), err, "pthread_create");
}

// setReaderIoPriority(ioClass, level): ioprio_set(2) for every reader thread, now and later.
void SetReaderIoPriority(const Napi::CallbackInfo& info) {
  const uint64_t ioClass = ToSafeUint64(info[0], "ioClass");
  const uint64_t level = ToSafeUint64(info[1], "level");
  if (ioClass >= IOPRIO_NR_CLASSES || level >= IOPRIO_NR_LEVELS) {
    throw Napi::RangeError::New(info.Env(), "no such I/O priority class or level");
  }
  const int err = IoThreadPool::Instance().SetIoPriority(
      static_cast<int>(ioClass << IOPRIO_CLASS_SHIFT | level));
  if (err != 0) throw ErrnoError(info.Env(), err, "ioprio_set");
}

// The kernel thread ids of the reader threads, for ionice(1) and tests.
Napi::Value ReaderThreadIds(const Napi::CallbackInfo& info) {
  const std::vector<pid_t> ids = IoThreadPool::Instance().ThreadIds();
  Napi::Array result = Napi::Array::New(info.Env(), ids.size());
  for (size_t i = 0; i < ids.size(); i++) result.Set(i, static_cast<double>(ids[i]));
  return result;
}

Napi::Object IoPriorityClasses(Napi::Env env) {
  Napi::Object classes = Napi::Object::New(env);
  classes.Set("none", static_cast<double>(IOPRIO_CLASS_NONE));
  classes.Set("bestEffort", static_cast<double>(IOPRIO_CLASS_BE));
  classes.Set("idle", static_cast<double>(IOPRIO_CLASS_IDLE));
  classes.Set("lowestLevel", static_cast<double>(IOPRIO_NR_LEVELS - 1));
  return classes;
}

void SetReaderMaxPooledBytes(const Napi::CallbackInfo& info) {
  BufferPool::Instance().SetMaxPooledBytes(ToSafeUint64(info[0], "maxPooledBytes"));
}

}  // namespace

void InitReader(Napi::Env env, Napi::Object exports) {
  exports.Set("DirectReaderHandle",
              DirectReaderHandle::Define(env, CompletionChannel::CreateForEnvironment(env)));
  exports.Set("readerPoolStats", Napi::Function::New(env, ReaderPoolStats, "readerPoolStats"));
  exports.Set("recycleReadBuffer", Napi::Function::New(env, RecycleReadBuffer, "recycleReadBuffer"));
  exports.Set("setReaderIoThreads", Napi::Function::New(env, SetReaderIoThreads, "setReaderIoThreads"));
  exports.Set("setReaderIoPriority", Napi::Function::New(env, SetReaderIoPriority, "setReaderIoPriority"));
  exports.Set("readerThreadIds", Napi::Function::New(env, ReaderThreadIds, "readerThreadIds"));
  exports.Set("ioPriorityClasses", IoPriorityClasses(env));
  exports.Set("setReaderMaxPooledBytes",
              Napi::Function::New(env, SetReaderMaxPooledBytes, "setReaderMaxPooledBytes"));
}

}  // namespace coriolis
