// The blksnap v1 control device (/dev/veeamblksnap): each ioctl the engine uses, run on the
// libuv pool and returned as a Promise; the snapshot event queue, whose wait blocks in the
// kernel, read by one dedicated thread per snapshot; and the encode/decode entries that the
// golden-byte tests drive. Real calls and tests share one encoder and one decoder per ioctl.
// Layouts and numbers: blksnap_abi.h, described in docs/blksnap.md.
#include <fcntl.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "blksnap_abi.h"
#include "errors.h"
#include "ioctl_support.h"

namespace coriolis::blksnap {
namespace {

using ioctl::Arg;
using ioctl::ArgsObject;
using ioctl::Call;
using ioctl::Load;
using ioctl::Records;
using ioctl::ThrowRange;
using ioctl::ThrowType;
using ioctl::ToObject;
using ioctl::ToU32;
using ioctl::ToU64;
using ioctl::Def;
using ioctl::kEnumerationRounds;
using ioctl::RunEnumeration;
using ioctl::RunOnce;
using ioctl::RunSingle;

// ---- JavaScript values -> ABI fields ---------------------------------------------------------

DevId ToDevId(Napi::Env env, Napi::Value v, const std::string& what) {
  Napi::Object o = ToObject(env, v, what);
  return DevId{ToU32(env, o.Get("major"), what + ".major", kMaxMajor - 1),
               ToU32(env, o.Get("minor"), what + ".minor", kMaxMinor - 1)};
}

Uuid ToUuid(Napi::Env env, Napi::Value v, const std::string& what) {
  if (!v.IsBuffer() || v.As<Napi::Buffer<uint8_t>>().Length() != sizeof(Uuid)) ThrowType(env, what, "a 16-byte Buffer");
  Uuid id;
  std::memcpy(id.b, v.As<Napi::Buffer<uint8_t>>().Data(), sizeof id.b);
  return id;
}

Napi::Object FromDevId(Napi::Env env, const DevId& d) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("major", d.mj);
  o.Set("minor", d.mn);
  return o;
}

Napi::Buffer<uint8_t> FromUuid(Napi::Env env, const Uuid& id) {
  return Napi::Buffer<uint8_t>::Copy(env, id.b, sizeof id.b);
}

// ---- Encoders (JS thread) --------------------------------------------------------------------

// A struct with its padding zeroed: aggregate initialisation leaves padding bytes undefined, and
// they would reach the kernel.
template <typename T>
T Blank() {
  T value;
  std::memset(&value, 0, sizeof value);
  return value;
}

template <typename T>
Arg EncodeOutput(Napi::Env, Napi::Object) {
  Arg arg;
  arg.AddZeroed(sizeof(T));
  return arg;
}

Arg EncodeDevice(Napi::Env env, Napi::Object args) {
  Arg arg;
  arg.Add(TrackerRemoveArg{ToDevId(env, args.Get("device"), "device")});
  return arg;
}

Arg EncodeSnapshotId(Napi::Env env, Napi::Object args) {
  Arg arg;
  arg.Add(SnapshotIdArg{ToUuid(env, args.Get("id"), "id")});
  return arg;
}

Arg EncodeTrackerCollect(uint32_t capacity) {
  auto a = Blank<TrackerCollectArg>();
  a.count = capacity;
  Arg arg;
  arg.Add(a);
  if (capacity > 0) arg.Point(0, offsetof(TrackerCollectArg, cbt_info_array), arg.AddZeroed(size_t{capacity} * sizeof(CbtInfo)));
  return arg;
}

Arg EncodeSnapshotCollect(uint32_t capacity) {
  auto a = Blank<SnapshotCollectArg>();
  a.count = capacity;
  Arg arg;
  arg.Add(a);
  if (capacity > 0) arg.Point(0, offsetof(SnapshotCollectArg, ids), arg.AddZeroed(size_t{capacity} * sizeof(Uuid)));
  return arg;
}

Arg EncodeCollectImages(const Uuid& id, uint32_t capacity) {
  auto a = Blank<CollectImagesArg>();
  a.id = id;
  a.count = capacity;
  Arg arg;
  arg.Add(a);
  if (capacity > 0) {
    arg.Point(0, offsetof(CollectImagesArg, image_info_array), arg.AddZeroed(size_t{capacity} * sizeof(ImageInfo)));
  }
  return arg;
}

uint32_t Capacity(Napi::Env env, Napi::Object args) {
  return args.Has("capacity") ? ToU32(env, args.Get("capacity"), "capacity", 1 << 20) : 0;
}

Arg EncodeTrackerCollectJs(Napi::Env env, Napi::Object args) { return EncodeTrackerCollect(Capacity(env, args)); }
Arg EncodeSnapshotCollectJs(Napi::Env env, Napi::Object args) { return EncodeSnapshotCollect(Capacity(env, args)); }
Arg EncodeCollectImagesJs(Napi::Env env, Napi::Object args) {
  return EncodeCollectImages(ToUuid(env, args.Get("id"), "id"), Capacity(env, args));
}

Arg EncodeReadCbtMap(Napi::Env env, Napi::Object args) {
  ReadCbtMapArg a{ToDevId(env, args.Get("device"), "device"), ToU32(env, args.Get("offset"), "offset"),
                  ToU32(env, args.Get("length"), "length", 1 << 30), 0};
  Arg arg;
  arg.Add(a);
  arg.Point(0, offsetof(ReadCbtMapArg, buff), arg.AddZeroed(a.length));
  return arg;
}

Arg EncodeSnapshotCreate(Napi::Env env, Napi::Object args) {
  Napi::Value v = args.Get("devices");
  if (!v.IsArray()) ThrowType(env, "devices", "an array of {major, minor}");
  Napi::Array a = v.As<Napi::Array>();
  std::vector<DevId> devices;
  for (uint32_t i = 0; i < a.Length(); i++) devices.push_back(ToDevId(env, a.Get(i), "devices[" + std::to_string(i) + "]"));
  auto create = Blank<SnapshotCreateArg>();
  create.count = static_cast<uint32_t>(devices.size());
  Arg arg;
  arg.Add(create);
  arg.Point(0, offsetof(SnapshotCreateArg, dev_id_array), arg.Add(devices.data(), devices.size() * sizeof(DevId)));
  return arg;
}

// An empty range list is valid: the module then only re-checks its low-space flag.
Arg EncodeAppendStorage(Napi::Env env, Napi::Object args) {
  Napi::Value v = args.Get("ranges");
  if (!v.IsArray()) ThrowType(env, "ranges", "an array of {sectorOffset, sectorCount}");
  Napi::Array a = v.As<Napi::Array>();
  std::vector<SectorRange> ranges;
  for (uint32_t i = 0; i < a.Length(); i++) {
    std::string what = "ranges[" + std::to_string(i) + "]";
    Napi::Object r = ToObject(env, a.Get(i), what);
    SectorRange range{ToU64(env, r.Get("sectorOffset"), what + ".sectorOffset"),
                      ToU64(env, r.Get("sectorCount"), what + ".sectorCount")};
    if (range.sector_count == 0 || range.sector_offset + range.sector_count < range.sector_offset) {
      ThrowRange(env, what, "a non-empty span within 0..2^64-1 sectors");
    }
    ranges.push_back(range);
  }
  auto append = Blank<AppendStorageArg>();
  append.id = ToUuid(env, args.Get("id"), "id");
  append.dev_id = ToDevId(env, args.Get("device"), "device");
  append.count = static_cast<uint32_t>(ranges.size());
  Arg arg;
  arg.Add(append);
  arg.Point(0, offsetof(AppendStorageArg, ranges), arg.Add(ranges.data(), ranges.size() * sizeof(SectorRange)));
  return arg;
}

Arg EncodeWaitEvent(const Uuid& id, uint32_t timeout_ms) {
  Arg arg;
  arg.AddZeroed(sizeof(WaitEventArg));
  std::memcpy(arg.Data(0) + offsetof(WaitEventArg, id), &id, sizeof id);
  std::memcpy(arg.Data(0) + offsetof(WaitEventArg, timeout_ms), &timeout_ms, sizeof timeout_ms);
  return arg;
}

Arg EncodeWaitEventJs(Napi::Env env, Napi::Object args) {
  return EncodeWaitEvent(ToUuid(env, args.Get("id"), "id"), ToU32(env, args.Get("timeoutMs"), "timeoutMs"));
}

// ---- Runners (pool thread) -------------------------------------------------------------------

int RunTrackerCollect(int fd, const Def& def, Call& call) {
  return RunEnumeration<TrackerCollectArg, EncodeTrackerCollect>(fd, def, call, ENOBUFS);
}
int RunSnapshotCollect(int fd, const Def& def, Call& call) {
  return RunEnumeration<SnapshotCollectArg, EncodeSnapshotCollect>(fd, def, call, ENODATA);
}
int RunCollectImages(int fd, const Def& def, Call& call) {
  Uuid id = call.arg.Root<CollectImagesArg>().id;
  int err = 0;
  for (int round = 0; round < kEnumerationRounds; round++) {
    call.arg = EncodeCollectImages(id, 0);
    if ((err = RunOnce(fd, def.request, call)) != 0) return err;
    uint32_t count = call.arg.Root<CollectImagesArg>().count;
    if (count == 0) return 0;
    call.arg = EncodeCollectImages(id, count);
    err = RunOnce(fd, def.request, call);
    if (err != ENODATA) return err;
  }
  return err;
}

// ---- Decoders (JS thread) --------------------------------------------------------------------

Napi::Value DecodeNothing(Napi::Env env, const Call&) { return env.Undefined(); }

Napi::Value DecodeVersion(Napi::Env env, const Call& call) {
  VersionArg v = call.arg.Root<VersionArg>();
  Napi::Object o = Napi::Object::New(env);
  o.Set("major", v.major);
  o.Set("minor", v.minor);
  o.Set("revision", v.revision);
  o.Set("build", v.build);
  return o;
}

Napi::Value DecodeMod(Napi::Env env, const Call& call) {
  ModArg m = call.arg.Root<ModArg>();
  Napi::Object o = Napi::Object::New(env);
  o.Set("compatibilityFlags", Napi::BigInt::New(env, m.compatibility_flags));
  o.Set("name", std::string(reinterpret_cast<const char*>(m.name), strnlen(reinterpret_cast<const char*>(m.name), kModNameLimit)));
  return o;
}

Napi::Value DecodeTrackerCollect(Napi::Env env, const Call& call) {
  uint32_t count = call.arg.Root<TrackerCollectArg>().count;
  const uint8_t* p = Records(env, call, count, sizeof(CbtInfo));
  Napi::Array out = Napi::Array::New(env, count);
  for (uint32_t i = 0; i < count; i++) {
    CbtInfo info = Load<CbtInfo>(p + i * sizeof(CbtInfo));
    Napi::Object o = Napi::Object::New(env);
    o.Set("device", FromDevId(env, info.dev_id));
    o.Set("blockSize", info.blk_size);
    o.Set("capacityBytes", Napi::BigInt::New(env, info.device_capacity));
    o.Set("blockCount", info.blk_count);
    o.Set("generationId", FromUuid(env, info.generation_id));
    o.Set("snapNumber", info.snap_number);
    out.Set(i, o);
  }
  return out;
}

// The return value is the number of bytes copied; a short count is the caller's to judge.
Napi::Value DecodeReadCbtMap(Napi::Env env, const Call& call) {
  size_t n = std::min<size_t>(std::max<long>(call.rc, 0), call.arg.Block(1).size());
  return Napi::Buffer<uint8_t>::Copy(env, call.arg.Block(1).data(), n);
}

Napi::Value DecodeSnapshotCreate(Napi::Env env, const Call& call) {
  return FromUuid(env, call.arg.Root<SnapshotCreateArg>().id);
}

Napi::Value DecodeSnapshotCollect(Napi::Env env, const Call& call) {
  uint32_t count = call.arg.Root<SnapshotCollectArg>().count;
  const uint8_t* p = Records(env, call, count, sizeof(Uuid));
  Napi::Array out = Napi::Array::New(env, count);
  for (uint32_t i = 0; i < count; i++) out.Set(i, FromUuid(env, Load<Uuid>(p + i * sizeof(Uuid))));
  return out;
}

Napi::Value DecodeCollectImages(Napi::Env env, const Call& call) {
  uint32_t count = call.arg.Root<CollectImagesArg>().count;
  const uint8_t* p = Records(env, call, count, sizeof(ImageInfo));
  Napi::Array out = Napi::Array::New(env, count);
  for (uint32_t i = 0; i < count; i++) {
    ImageInfo info = Load<ImageInfo>(p + i * sizeof(ImageInfo));
    Napi::Object o = Napi::Object::New(env);
    o.Set("original", FromDevId(env, info.orig_dev_id));
    o.Set("image", FromDevId(env, info.image_dev_id));
    out.Set(i, o);
  }
  return out;
}

// {type: 'low-free-space', requestedSectors} | {type: 'corrupted', device, errno, code} |
// {type: 'unknown', code}; every one with timeLabel (kernel ktime, ns).
Napi::Value DecodeEvent(Napi::Env env, const WaitEventArg& e) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("timeLabel", Napi::BigInt::New(env, e.time_label));
  if (e.code == kEventLowFreeSpace) {
    o.Set("type", "low-free-space");
    o.Set("requestedSectors", Napi::BigInt::New(env, Load<LowFreeSpaceData>(e.data).requested_nr_sect));
  } else if (e.code == kEventCorrupted) {
    CorruptedData c = Load<CorruptedData>(e.data);
    // The header says a negative errno; the running module sends ENOSPC positive. Either way.
    int32_t err = c.err_code < 0 ? -c.err_code : c.err_code;
    o.Set("type", "corrupted");
    o.Set("device", FromDevId(env, c.orig_dev_id));
    o.Set("errno", err);
    o.Set("code", err != 0 ? Napi::Value(Napi::String::New(env, ErrnoName(err))) : env.Null());
  } else {
    o.Set("type", "unknown");
    o.Set("code", e.code);
  }
  return o;
}

Napi::Value DecodeWaitEvent(Napi::Env env, const Call& call) { return DecodeEvent(env, call.arg.Root<WaitEventArg>()); }

const Def kIoctls[] = {
    {"IOCTL_BLK_SNAP_VERSION", kIoctlVersion, sizeof(VersionArg), EncodeOutput<VersionArg>, RunSingle, DecodeVersion},
    {"IOCTL_BLK_SNAP_TRACKER_REMOVE", kIoctlTrackerRemove, sizeof(TrackerRemoveArg), EncodeDevice, RunSingle,
     DecodeNothing},
    {"IOCTL_BLK_SNAP_TRACKER_COLLECT", kIoctlTrackerCollect, sizeof(TrackerCollectArg), EncodeTrackerCollectJs,
     RunTrackerCollect, DecodeTrackerCollect},
    {"IOCTL_BLK_SNAP_TRACKER_READ_CBT_MAP", kIoctlTrackerReadCbtMap, sizeof(ReadCbtMapArg), EncodeReadCbtMap,
     RunSingle, DecodeReadCbtMap},
    {"IOCTL_BLK_SNAP_SNAPSHOT_CREATE", kIoctlSnapshotCreate, sizeof(SnapshotCreateArg), EncodeSnapshotCreate,
     RunSingle, DecodeSnapshotCreate},
    {"IOCTL_BLK_SNAP_SNAPSHOT_DESTROY", kIoctlSnapshotDestroy, sizeof(SnapshotIdArg), EncodeSnapshotId, RunSingle,
     DecodeNothing},
    {"IOCTL_BLK_SNAP_SNAPSHOT_APPEND_STORAGE", kIoctlSnapshotAppendStorage, sizeof(AppendStorageArg),
     EncodeAppendStorage, RunSingle, DecodeNothing},
    {"IOCTL_BLK_SNAP_SNAPSHOT_TAKE", kIoctlSnapshotTake, sizeof(SnapshotIdArg), EncodeSnapshotId, RunSingle,
     DecodeNothing},
    {"IOCTL_BLK_SNAP_SNAPSHOT_COLLECT", kIoctlSnapshotCollect, sizeof(SnapshotCollectArg), EncodeSnapshotCollectJs,
     RunSnapshotCollect, DecodeSnapshotCollect},
    {"IOCTL_BLK_SNAP_SNAPSHOT_COLLECT_IMAGES", kIoctlSnapshotCollectImages, sizeof(CollectImagesArg),
     EncodeCollectImagesJs, RunCollectImages, DecodeCollectImages},
    {"IOCTL_BLK_SNAP_SNAPSHOT_WAIT_EVENT", kIoctlSnapshotWaitEvent, sizeof(WaitEventArg), EncodeWaitEventJs,
     RunSingle, DecodeWaitEvent},
    {"IOCTL_BLK_SNAP_MOD", kIoctlMod, sizeof(ModArg), EncodeOutput<ModArg>, RunSingle, DecodeMod},
};

const ioctl::Table kTable{"blksnap", std::begin(kIoctls), std::end(kIoctls)};

// ---- Test entries ----------------------------------------------------------------------------

// blksnapEncode(name, args) -> {request, blocks: Buffer[], pointers: {block, offset, target}[]}
Napi::Value Encode(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const Def& def = kTable.Require(env, info[0]);
  Arg arg = def.encode(env, ArgsObject(env, info[1]));
  arg.LinkPlaceholders();
  Napi::Object out = ioctl::EncodedToJs(env, arg);
  out.Set("request", def.request);
  return out;
}

Napi::Value Decode(const Napi::CallbackInfo& info) { return ioctl::DecodeForTest(kTable, info); }

// ---- The event waiter ------------------------------------------------------------------------

// What one wait produced, carried to the JS thread: an event, the snapshot's end (ESRCH), or a
// failure.
struct WaitResult {
  WaitEventArg event;
  int err;
  std::string path;
};

void DeliverEvent(Napi::Env env, Napi::Function callback, std::nullptr_t*, WaitResult* data) {
  std::unique_ptr<WaitResult> result(data);
  if (env == nullptr) return;
  if (result->err == 0) {
    callback.Call({env.Null(), DecodeEvent(env, result->event)});
  } else if (result->err == ESRCH) {  // the snapshot is gone: its queue with it
    Napi::Object gone = Napi::Object::New(env);
    gone.Set("type", "gone");
    callback.Call({env.Null(), gone});
  } else {
    callback.Call({ErrnoError(env, result->err, "IOCTL_BLK_SNAP_SNAPSHOT_WAIT_EVENT", result->path).Value()});
  }
}

using EventTsfn = Napi::TypedThreadSafeFunction<std::nullptr_t, WaitResult, DeliverEvent>;

// new BlksnapEventWaiter(path, id, timeoutMs, ackDevice, onEvent(err, event)) starts one thread
// that waits on the snapshot's queue through its own descriptor. The wait is bounded by timeoutMs
// inside the kernel, so stop() is seen within that time: stop(): Promise<void> resolves once the
// thread has ended and every event it read was delivered. The thread also ends by itself when the
// snapshot is gone ('gone' event) or a wait fails (error).
//
// Each low-free-space event is acknowledged at once, from this thread, with an empty
// APPEND_STORAGE on ackDevice (a device of the difference storage): the module raises the next
// one only after that, and counts the space it asks for only per event, so any delay here lets
// its fill overtake its count and the events stop for good (docs/blksnap.md). The event loop
// may be busy; this thread is not.
class EventWaiter : public Napi::ObjectWrap<EventWaiter> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "BlksnapEventWaiter", {InstanceMethod("stop", &EventWaiter::Stop)});
  }

  explicit EventWaiter(const Napi::CallbackInfo& info) : Napi::ObjectWrap<EventWaiter>(info) {
    Napi::Env env = info.Env();
    if (!info[0].IsString()) ThrowType(env, "path", "a string");
    if (!info[4].IsFunction()) ThrowType(env, "onEvent", "a function");
    shared_->path = info[0].As<Napi::String>();
    shared_->id = ToUuid(env, info[1], "id");
    shared_->timeout_ms = ToU32(env, info[2], "timeoutMs", 60000);
    if (shared_->timeout_ms == 0) ThrowRange(env, "timeoutMs", "at least 1");
    shared_->ack_device = ToDevId(env, info[3], "ackDevice");
    auto shared = shared_;
    tsfn_ = EventTsfn::New(env, info[4].As<Napi::Function>(), "coriolis:blksnap-events", 0, 1, nullptr,
                           [shared](Napi::Env env, void*, std::nullptr_t*) {
                             if (shared->thread.joinable()) shared->thread.join();
                             shared->finished = true;
                             for (auto& deferred : shared->stops) deferred.Resolve(env.Undefined());
                             shared->stops.clear();
                           });
    shared_->thread = std::thread(Loop, shared_, tsfn_);
  }

  ~EventWaiter() override { shared_->stop.store(true); }

 private:
  struct Shared {
    std::string path;
    Uuid id{};
    uint32_t timeout_ms = 0;
    DevId ack_device{};
    std::atomic<bool> stop{false};
    std::thread thread;
    // JS thread only:
    bool finished = false;
    std::vector<Napi::Promise::Deferred> stops;
  };

  static void Loop(std::shared_ptr<Shared> shared, EventTsfn tsfn) {
    int fd = ::open(shared->path.c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) {
      auto result = std::make_unique<WaitResult>();
      result->err = errno;
      result->path = shared->path;
      if (tsfn.NonBlockingCall(result.get()) == napi_ok) result.release();
    }
    while (fd >= 0 && !shared->stop.load()) {
      auto result = std::make_unique<WaitResult>();
      Arg arg = EncodeWaitEvent(shared->id, shared->timeout_ms);
      int rc = ::ioctl(fd, kIoctlSnapshotWaitEvent, arg.Data(0));
      int err = rc < 0 ? errno : 0;
      if (err == ENOENT || err == EINTR) continue;  // the wait timed out, or a signal woke it
      result->event = arg.Root<WaitEventArg>();
      if (err == 0 && result->event.code == kEventLowFreeSpace) Acknowledge(fd, *shared);
      result->err = err;
      result->path = shared->path;
      if (tsfn.NonBlockingCall(result.get()) == napi_ok) result.release();  // unlimited queue
      if (err != 0) break;
    }
    if (fd >= 0) ::close(fd);
    tsfn.Release();
  }

  // Re-arms the module's low-space event; it takes effect only if the storage already covers
  // what the module asked for, else the space the engine adds next does it. Failures are left
  // to that next append to report.
  static void Acknowledge(int fd, const Shared& shared) {
    auto append = Blank<AppendStorageArg>();
    append.id = shared.id;
    append.dev_id = shared.ack_device;
    ::ioctl(fd, kIoctlSnapshotAppendStorage, &append);
  }

  Napi::Value Stop(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    auto deferred = Napi::Promise::Deferred::New(env);
    shared_->stop.store(true);
    if (shared_->finished) deferred.Resolve(env.Undefined());
    else shared_->stops.push_back(deferred);
    return deferred.Promise();
  }

  std::shared_ptr<Shared> shared_ = std::make_shared<Shared>();
  EventTsfn tsfn_;
};

}  // namespace

void Register(Napi::Env env, Napi::Object exports) {
  Napi::Object sizes = ioctl::ExportAbi(env, exports, "blksnap", kTable, Encode, Decode);
  sizes.Set("DevId", sizeof(DevId));
  sizes.Set("SectorRange", sizeof(SectorRange));
  sizes.Set("CbtInfo", sizeof(CbtInfo));
  sizes.Set("ImageInfo", sizeof(ImageInfo));
  sizes.Set("LowFreeSpaceData", sizeof(LowFreeSpaceData));
  sizes.Set("CorruptedData", sizeof(CorruptedData));
  exports.Set("BlksnapControlHandle", ioctl::ControlHandle<kTable>::Define(env, "BlksnapControlHandle"));
  exports.Set("BlksnapEventWaiter", EventWaiter::Define(env));
}

}  // namespace coriolis::blksnap

namespace coriolis {
void InitBlksnap(Napi::Env env, Napi::Object exports) { blksnap::Register(env, exports); }
}  // namespace coriolis
