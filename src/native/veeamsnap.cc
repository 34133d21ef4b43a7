// The veeamsnap control device: each ioctl the agent uses, run off the event loop and
// returned as a Promise, plus the encode/decode entries that the golden-byte tests drive.
// The real calls and the tests share one encoder and one decoder per ioctl, so the tests
// check exactly the bytes the kernel receives. Layouts and numbers: veeamsnap_abi.h.
#include <fcntl.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "errors.h"
#include "ioctl_support.h"
#include "veeamsnap_abi.h"

namespace coriolis::veeamsnap {

using ioctl::Arg;
using ioctl::ArgsObject;
using ioctl::Call;
using ioctl::Def;
using ioctl::kEnumerationRounds;
using ioctl::RunEnumeration;
using ioctl::RunOnce;
using ioctl::RunSingle;
using ioctl::DecodeForTest;
using ioctl::EncodedToJs;
using ioctl::Load;
using ioctl::Records;
using ioctl::ThrowRange;
using ioctl::ThrowType;
using ioctl::ToObject;
using ioctl::ToU32;
using ioctl::ToU64;

namespace {

// ---- JavaScript values -> ABI fields ---------------------------------------------------------

// The kernel packs major:minor with its MKDEV (major << 20 | minor): a larger field would
// silently name another device.
int32_t ToDevField(Napi::Env env, Napi::Value v, const std::string& what, int32_t limit) {
  if (!v.IsNumber()) ThrowType(env, what, "a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= 0 && d < limit && std::trunc(d) == d)) {
    ThrowRange(env, what, limit == kMaxMajor ? "an integer in 0..4095" : "an integer in 0..2^20-1");
  }
  return static_cast<int32_t>(d);
}

DevId ToDevId(Napi::Env env, Napi::Value v, const std::string& what) {
  Napi::Object o = ToObject(env, v, what);
  return DevId{ToDevField(env, o.Get("major"), what + ".major", kMaxMajor),
               ToDevField(env, o.Get("minor"), what + ".minor", kMaxMinor)};
}

std::vector<DevId> ToDevIds(Napi::Env env, Napi::Value v, const std::string& what) {
  if (!v.IsArray()) ThrowType(env, what, "an array of {major, minor}");
  Napi::Array a = v.As<Napi::Array>();
  std::vector<DevId> out;
  for (uint32_t i = 0; i < a.Length(); i++) {
    out.push_back(ToDevId(env, a.Get(i), what + "[" + std::to_string(i) + "]"));
  }
  return out;
}

// Snapstore storage: 'memory' (0,0), 'multidev' (-1,-1), or the device holding the ranges.
// Keeping the sentinels behind names means a real device such as 8:0 is never mistaken for
// memory (the Go agent's bug).
DevId ToStorage(Napi::Env env, Napi::Value v) {
  if (v.IsString()) {
    std::string s = v.As<Napi::String>();
    if (s == "memory") return kMemoryStorage;
    if (s == "multidev") return kMultidevStorage;
  } else if (v.IsObject()) {
    return ToDevId(env, v, "storage");
  }
  ThrowType(env, "storage", "'memory', 'multidev' or {major, minor}");
}

void ToSnapstoreId(Napi::Env env, Napi::Value v, uint8_t (&out)[16]) {
  if (!v.IsBuffer() || v.As<Napi::Buffer<uint8_t>>().Length() != sizeof out) {
    ThrowType(env, "id", "a 16-byte Buffer");
  }
  std::memcpy(out, v.As<Napi::Buffer<uint8_t>>().Data(), sizeof out);
}

std::vector<ByteRange> ToRanges(Napi::Env env, Napi::Value v) {
  if (!v.IsArray()) ThrowType(env, "ranges", "an array of {left, right}");
  Napi::Array a = v.As<Napi::Array>();
  std::vector<ByteRange> out;
  for (uint32_t i = 0; i < a.Length(); i++) {
    std::string what = "ranges[" + std::to_string(i) + "]";
    Napi::Object r = ToObject(env, a.Get(i), what);
    out.push_back(ByteRange{ToU64(env, r.Get("left"), what + ".left"),
                            ToU64(env, r.Get("right"), what + ".right")});
  }
  return out;
}

// ---- ABI fields -> JavaScript values ---------------------------------------------------------

Napi::Object FromDevId(Napi::Env env, const DevId& d) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("major", d.major);
  o.Set("minor", d.minor);
  return o;
}

// ---- Encoders (JS thread) ----------------------------------------------------------------

Arg EncodeEmpty(size_t size) {
  Arg arg;
  arg.AddZeroed(size);  // output-only: the kernel fills it
  return arg;
}

template <typename T>
Arg EncodeOutput(Napi::Env, Napi::Object) {
  return EncodeEmpty(sizeof(T));
}

Arg EncodeDevice(Napi::Env env, Napi::Object args) {
  Arg arg;
  arg.Add(ToDevId(env, args.Get("device"), "device"));
  return arg;
}

Arg EncodeTrackingCollect(uint32_t capacity) {
  Arg arg;
  arg.Add(TrackingCollectArg{capacity, 0});
  if (capacity > 0) {  // a null pointer makes it the count query
    arg.Point(0, offsetof(TrackingCollectArg, cbt_info), arg.AddZeroed(size_t{capacity} * sizeof(CbtInfo)));
  }
  return arg;
}

Arg EncodeTrackingCollectJs(Napi::Env env, Napi::Object args) {
  return EncodeTrackingCollect(args.Has("capacity") ? ToU32(env, args.Get("capacity"), "capacity") : 0);
}

Arg EncodeReadCbtBitmap(Napi::Env env, Napi::Object args) {
  ReadCbtBitmapArg a{ToDevId(env, args.Get("device"), "device"), ToU32(env, args.Get("offset"), "offset"),
                     ToU32(env, args.Get("length"), "length"), 0};
  Arg arg;
  arg.Add(a);
  arg.Point(0, offsetof(ReadCbtBitmapArg, buffer), arg.AddZeroed(a.length));
  return arg;
}

Arg EncodeSetKernelEntries(Napi::Env env, Napi::Object args) {
  Napi::Value v = args.Get("entries");
  if (!v.IsArray()) ThrowType(env, "entries", "an array of {name, address}");
  Napi::Array entries = v.As<Napi::Array>();
  // count 0 makes the module dereference an empty array (spec §2.10).
  if (entries.Length() == 0) ThrowRange(env, "entries", "non-empty");
  Arg arg;
  arg.Add(SetKernelEntriesArg{entries.Length(), 0});
  arg.Point(0, offsetof(SetKernelEntriesArg, entries), arg.AddZeroed(entries.Length() * sizeof(KernelEntry)));
  for (uint32_t i = 0; i < entries.Length(); i++) {
    std::string what = "entries[" + std::to_string(i) + "]";
    Napi::Object e = ToObject(env, entries.Get(i), what);
    if (!e.Get("name").IsString()) ThrowType(env, what + ".name", "a string");
    std::string name = e.Get("name").As<Napi::String>();
    if (name.empty() || name.size() > kKernelEntryNameMax || name.find('\0') != std::string::npos) {
      ThrowRange(env, what + ".name", "1..255 characters without NUL");
    }
    uint64_t addr = ToU64(env, e.Get("address"), what + ".address");
    std::memcpy(arg.Data(1) + i * sizeof(KernelEntry) + offsetof(KernelEntry, addr), &addr, sizeof addr);
    arg.Point(1, i * sizeof(KernelEntry) + offsetof(KernelEntry, name), arg.Add(name.c_str(), name.size() + 1));
  }
  return arg;
}

Arg EncodeSnapshotCreate(Napi::Env env, Napi::Object args) {
  std::vector<DevId> devices = ToDevIds(env, args.Get("devices"), "devices");
  Arg arg;
  arg.Add(SnapshotCreateArg{0, static_cast<uint32_t>(devices.size()), 0});
  arg.Point(0, offsetof(SnapshotCreateArg, devices), arg.AddArray(devices));
  return arg;
}

Arg EncodeSnapshotDestroy(Napi::Env env, Napi::Object args) {
  Arg arg;
  arg.Add(SnapshotDestroyArg{ToU64(env, args.Get("snapshotId"), "snapshotId")});
  return arg;
}

Arg EncodeSnapshotErrno(Napi::Env env, Napi::Object args) {
  Arg arg;
  arg.Add(SnapshotErrnoArg{ToDevId(env, args.Get("device"), "device"), 0});
  return arg;
}

Arg EncodeSnapstoreCreate(Napi::Env env, Napi::Object args) {
  SnapstoreCreateArg a{};
  ToSnapstoreId(env, args.Get("id"), a.id);
  a.storage_dev = ToStorage(env, args.Get("storage"));
  std::vector<DevId> devices = ToDevIds(env, args.Get("devices"), "devices");
  a.count = static_cast<uint32_t>(devices.size());
  Arg arg;
  arg.Add(a);
  arg.Point(0, offsetof(SnapstoreCreateArg, devices), arg.AddArray(devices));
  return arg;
}

Arg EncodeSnapstoreFile(Napi::Env env, Napi::Object args) {
  SnapstoreFileArg a{};
  ToSnapstoreId(env, args.Get("id"), a.id);
  std::vector<ByteRange> ranges = ToRanges(env, args.Get("ranges"));
  a.range_count = static_cast<uint32_t>(ranges.size());
  Arg arg;
  arg.Add(a);
  arg.Point(0, offsetof(SnapstoreFileArg, ranges), arg.AddArray(ranges));
  return arg;
}

Arg EncodeSnapstoreMemory(Napi::Env env, Napi::Object args) {
  SnapstoreMemoryArg a{};
  ToSnapstoreId(env, args.Get("id"), a.id);
  a.size = ToU64(env, args.Get("size"), "size");
  Arg arg;
  arg.Add(a);
  return arg;
}

Arg EncodeSnapstoreCleanup(Napi::Env env, Napi::Object args) {
  SnapstoreCleanupArg a{};
  ToSnapstoreId(env, args.Get("id"), a.id);
  Arg arg;
  arg.Add(a);
  return arg;
}

Arg EncodeSnapstoreFileMultidev(Napi::Env env, Napi::Object args) {
  SnapstoreFileMultidevArg a{};
  ToSnapstoreId(env, args.Get("id"), a.id);
  a.storage_dev = ToDevId(env, args.Get("device"), "device");
  std::vector<ByteRange> ranges = ToRanges(env, args.Get("ranges"));
  a.range_count = static_cast<uint32_t>(ranges.size());
  Arg arg;
  arg.Add(a);
  arg.Point(0, offsetof(SnapstoreFileMultidevArg, ranges), arg.AddArray(ranges));
  return arg;
}

Arg EncodeCollectImages(int32_t capacity) {
  Arg arg;
  arg.Add(CollectSnapshotImagesArg{capacity, 0});
  if (capacity > 0) {
    arg.Point(0, offsetof(CollectSnapshotImagesArg, images), arg.AddZeroed(size_t(capacity) * sizeof(ImageInfo)));
  }
  return arg;
}

Arg EncodeCollectImagesJs(Napi::Env env, Napi::Object args) {
  uint32_t capacity = args.Has("capacity") ? ToU32(env, args.Get("capacity"), "capacity") : 0;
  if (capacity > INT32_MAX) ThrowRange(env, "capacity", "at most 2^31-1");
  return EncodeCollectImages(static_cast<int32_t>(capacity));
}

// ---- Runners (pool thread) -----------------------------------------------------------------

// The kernel answers a too-small capacity with ENOBUFS and writes nothing, so the exact count
// is a safe capacity: if a tracker appeared in between, count again.
int RunTrackingCollect(int fd, const Def& def, Call& call) {
  return RunEnumeration<TrackingCollectArg, EncodeTrackingCollect>(fd, def, call, ENOBUFS);
}

// A capacity below the real count makes the kernel write one record past its own buffer
// (spec §2.20, Appendix C), so never pass one: probe with 0 (ENODATA + the count written back
// when images exist), then fetch with room for the module's maximum. If the count still
// outgrew the capacity (impossible while the module caps images at 2048), probe again
// instead of retrying with the count the failed call reported.
int RunCollectImages(int fd, const Def& def, Call& call) {
  int err = 0;
  for (int round = 0; round < kEnumerationRounds; round++) {
    call.arg = EncodeCollectImages(0);
    err = RunOnce(fd, def.request, call);
    if (err == 0) return 0;  // no images
    int32_t count = call.arg.Root<CollectSnapshotImagesArg>().count;
    if (err != ENODATA || count <= 0) return err;
    int32_t capacity = std::max(count, kMaxImages);
    call.arg = EncodeCollectImages(capacity);
    err = RunOnce(fd, def.request, call);
    if (err != ENODATA || call.arg.Root<CollectSnapshotImagesArg>().count <= capacity) return err;
  }
  return err;
}

// ---- Decoders (JS thread) ------------------------------------------------------------------

Napi::Value DecodeNothing(Napi::Env env, const Call&) { return env.Undefined(); }

Napi::Value DecodeCompatibilityFlags(Napi::Env env, const Call& call) {
  uint64_t flags = call.arg.Root<CompatibilityFlagsArg>().flags;
  Napi::Object o = Napi::Object::New(env);
  o.Set("raw", Napi::BigInt::New(env, flags));
  o.Set("snapstore", (flags & kCompatSnapstore) != 0);
  o.Set("btrfs", (flags & kCompatBtrfs) != 0);
  o.Set("multidev", (flags & kCompatMultidev) != 0);
  o.Set("kernelEntries", (flags & kCompatKernelEntries) != 0);
  return o;
}

Napi::Value DecodeVersion(Napi::Env env, const Call& call) {
  VersionArg v = call.arg.Root<VersionArg>();
  Napi::Object o = Napi::Object::New(env);
  o.Set("major", v.major);
  o.Set("minor", v.minor);
  o.Set("revision", v.revision);
  o.Set("build", v.build);
  return o;
}

Napi::Value DecodeTrackingCollect(Napi::Env env, const Call& call) {
  uint32_t count = call.arg.Root<TrackingCollectArg>().count;
  const uint8_t* p = Records(env, call, count, sizeof(CbtInfo));
  Napi::Array out = Napi::Array::New(env, count);
  for (uint32_t i = 0; i < count; i++) {
    CbtInfo info = Load<CbtInfo>(p + i * sizeof(CbtInfo));
    Napi::Object o = Napi::Object::New(env);
    o.Set("device", FromDevId(env, info.dev));
    o.Set("capacityBytes", Napi::BigInt::New(env, info.dev_capacity));
    o.Set("cbtMapSize", info.cbt_map_size);
    o.Set("snapNumber", info.snap_number);
    o.Set("generationId", Napi::Buffer<uint8_t>::Copy(env, info.generation_id, sizeof info.generation_id));
    out.Set(i, o);
  }
  return out;
}

Napi::Value DecodeTrackingBlockSize(Napi::Env env, const Call& call) {
  return Napi::Number::New(env, call.arg.Root<TrackingBlockSizeArg>().block_size);
}

// The return value is the number of bytes copied; a short count is the caller's to judge.
Napi::Value DecodeReadCbtBitmap(Napi::Env env, const Call& call) {
  size_t n = std::min<size_t>(std::max<long>(call.rc, 0), call.arg.Block(1).size());
  return Napi::Buffer<uint8_t>::Copy(env, call.arg.Block(1).data(), n);
}

// The return value is the byte count of NUL-terminated names; 0 means nothing unresolved.
Napi::Value DecodeUnresolvedKernelEntries(Napi::Env env, const Call& call) {
  const std::vector<uint8_t>& buf = call.arg.Block(0);
  size_t n = std::min<size_t>(std::max<long>(call.rc, 0), buf.size());
  Napi::Array out = Napi::Array::New(env);
  size_t start = 0;
  for (size_t i = 0; i <= n; i++) {
    if (i == n || buf[i] == 0) {
      if (i > start) out.Set(out.Length(), std::string(buf.begin() + start, buf.begin() + i));
      start = i + 1;
    }
  }
  return out;
}

Napi::Value DecodeSnapshotCreate(Napi::Env env, const Call& call) {
  return Napi::BigInt::New(env, call.arg.Root<SnapshotCreateArg>().snapshot_id);
}

Napi::Value DecodeSnapshotErrno(Napi::Env env, const Call& call) {
  return Napi::Number::New(env, call.arg.Root<SnapshotErrnoArg>().err_code);
}

// All-ones means the kernel knew no snapstore by that id (or the id was the all-zero one).
Napi::Value DecodeSnapstoreCleanup(Napi::Env env, const Call& call) {
  uint64_t filled = call.arg.Root<SnapstoreCleanupArg>().filled_bytes;
  return filled == kCleanupUnknownId ? env.Null() : Napi::BigInt::New(env, filled);
}

Napi::Value DecodeCollectImages(Napi::Env env, const Call& call) {
  int32_t count = call.arg.Root<CollectSnapshotImagesArg>().count;
  const uint8_t* p = Records(env, call, count, sizeof(ImageInfo));
  Napi::Array out = Napi::Array::New(env, count);
  for (int32_t i = 0; i < count; i++) {
    ImageInfo info = Load<ImageInfo>(p + i * sizeof(ImageInfo));
    Napi::Object o = Napi::Object::New(env);
    o.Set("original", FromDevId(env, info.original));
    o.Set("image", FromDevId(env, info.image));
    out.Set(i, o);
  }
  return out;
}

const Def kIoctls[] = {
    {"IOCTL_COMPATIBILITY_FLAGS", kIoctlCompatibilityFlags, sizeof(CompatibilityFlagsArg),
     EncodeOutput<CompatibilityFlagsArg>, RunSingle, DecodeCompatibilityFlags},
    {"IOCTL_GETVERSION", kIoctlGetVersion, sizeof(VersionArg), EncodeOutput<VersionArg>, RunSingle,
     DecodeVersion},
    {"IOCTL_TRACKING_ADD", kIoctlTrackingAdd, sizeof(DevId), EncodeDevice, RunSingle, DecodeNothing},
    {"IOCTL_TRACKING_REMOVE", kIoctlTrackingRemove, sizeof(DevId), EncodeDevice, RunSingle, DecodeNothing},
    {"IOCTL_TRACKING_COLLECT", kIoctlTrackingCollect, sizeof(TrackingCollectArg), EncodeTrackingCollectJs,
     RunTrackingCollect, DecodeTrackingCollect},
    {"IOCTL_TRACKING_BLOCK_SIZE", kIoctlTrackingBlockSize, sizeof(TrackingBlockSizeArg),
     EncodeOutput<TrackingBlockSizeArg>, RunSingle, DecodeTrackingBlockSize},
    {"IOCTL_TRACKING_READ_CBT_BITMAP", kIoctlTrackingReadCbtBitmap, sizeof(ReadCbtBitmapArg),
     EncodeReadCbtBitmap, RunSingle, DecodeReadCbtBitmap},
    {"IOCTL_SET_KERNEL_ENTRIES", kIoctlSetKernelEntries, sizeof(SetKernelEntriesArg), EncodeSetKernelEntries,
     RunSingle, DecodeNothing},
    // The buffer is zeroed by the encoder: the kernel leaves it untouched when it returns 0.
    {"IOCTL_GET_UNRESOLVED_KERNEL_ENTRIES", kIoctlGetUnresolvedKernelEntries,
     sizeof(GetUnresolvedKernelEntriesArg), EncodeOutput<GetUnresolvedKernelEntriesArg>, RunSingle,
     DecodeUnresolvedKernelEntries},
    {"IOCTL_SNAPSHOT_CREATE", kIoctlSnapshotCreate, sizeof(SnapshotCreateArg), EncodeSnapshotCreate, RunSingle,
     DecodeSnapshotCreate},
    {"IOCTL_SNAPSHOT_DESTROY", kIoctlSnapshotDestroy, sizeof(SnapshotDestroyArg), EncodeSnapshotDestroy,
     RunSingle, DecodeNothing},
    {"IOCTL_SNAPSHOT_ERRNO", kIoctlSnapshotErrno, sizeof(SnapshotErrnoArg), EncodeSnapshotErrno, RunSingle,
     DecodeSnapshotErrno},
    {"IOCTL_SNAPSTORE_CREATE", kIoctlSnapstoreCreate, sizeof(SnapstoreCreateArg), EncodeSnapstoreCreate,
     RunSingle, DecodeNothing},
    {"IOCTL_SNAPSTORE_FILE", kIoctlSnapstoreFile, sizeof(SnapstoreFileArg), EncodeSnapstoreFile, RunSingle,
     DecodeNothing},
    {"IOCTL_SNAPSTORE_MEMORY", kIoctlSnapstoreMemory, sizeof(SnapstoreMemoryArg), EncodeSnapstoreMemory,
     RunSingle, DecodeNothing},
    {"IOCTL_SNAPSTORE_CLEANUP", kIoctlSnapstoreCleanup, sizeof(SnapstoreCleanupArg), EncodeSnapstoreCleanup,
     RunSingle, DecodeSnapstoreCleanup},
    {"IOCTL_SNAPSTORE_FILE_MULTIDEV", kIoctlSnapstoreFileMultidev, sizeof(SnapstoreFileMultidevArg),
     EncodeSnapstoreFileMultidev, RunSingle, DecodeNothing},
    {"IOCTL_COLLECT_SNAPSHOT_IMAGES", kIoctlCollectSnapshotImages, sizeof(CollectSnapshotImagesArg),
     EncodeCollectImagesJs, RunCollectImages, DecodeCollectImages},
};

const ioctl::Table kTable{"veeamsnap", std::begin(kIoctls), std::end(kIoctls)};

// ---- Pipe commands -------------------------------------------------------------------------

template <typename Header, typename T>
std::vector<uint8_t> Message(const Header& header, const std::vector<T>& items) {
  std::vector<uint8_t> out(sizeof header + items.size() * sizeof(T));
  std::memcpy(out.data(), &header, sizeof header);
  if (!items.empty()) std::memcpy(out.data() + sizeof header, items.data(), items.size() * sizeof(T));
  return out;
}

// ---- Test entries ------------------------------------------------------------------------

// veeamsnapEncode(name, args) -> {request?, blocks: Buffer[], pointers: {block, offset, target}[]}
// Block 0 is the ioctl argument (or the pipe message); pointer fields hold
// veeamsnapPointerPlaceholder | target.
Napi::Value Encode(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString()) ThrowType(env, "name", "a string");
  std::string name = info[0].As<Napi::String>();
  Napi::Object args = ArgsObject(env, info[1]);
  const Def* def = kTable.Find(name);
  Arg arg;
  if (def != nullptr) {
    arg = def->encode(env, args);
    arg.LinkPlaceholders();
  } else {
    std::vector<uint8_t> message = EncodePipeCommand(env, name, args);
    arg.AddArray(message);
  }
  Napi::Object out = EncodedToJs(env, arg);
  if (def != nullptr) out.Set("request", def->request);
  return out;
}

Napi::Value Decode(const Napi::CallbackInfo& info) { return DecodeForTest(kTable, info); }

}  // namespace

std::vector<uint8_t> EncodePipeCommand(Napi::Env env, const std::string& name, Napi::Object args) {
  if (name == "INITIATE") {
    InitiateHeader h{};
    h.code = kCmdInitiate;
    ToSnapstoreId(env, args.Get("id"), h.id);
    h.empty_limit = ToU64(env, args.Get("emptyLimit"), "emptyLimit");
    h.storage_dev = ToStorage(env, args.Get("storage"));
    std::vector<DevId> devices = ToDevIds(env, args.Get("devices"), "devices");
    h.dev_count = static_cast<uint32_t>(devices.size());
    return Message(h, devices);
  }
  if (name == "NEXT_PORTION") {
    NextPortionHeader h{};
    h.code = kCmdNextPortion;
    ToSnapstoreId(env, args.Get("id"), h.id);
    std::vector<ByteRange> ranges = ToRanges(env, args.Get("ranges"));
    h.range_count = static_cast<uint32_t>(ranges.size());
    return Message(h, ranges);
  }
  if (name == "NEXT_PORTION_MULTIDEV") {
    NextPortionMultidevHeader h{};
    h.code = kCmdNextPortionMultidev;
    ToSnapstoreId(env, args.Get("id"), h.id);
    h.storage_dev = ToDevId(env, args.Get("device"), "device");
    std::vector<ByteRange> ranges = ToRanges(env, args.Get("ranges"));
    h.range_count = static_cast<uint32_t>(ranges.size());
    return Message(h, ranges);
  }
  throw Napi::TypeError::New(env, "unknown ioctl or pipe command " + name);
}

Napi::Object DecodePipeEvent(Napi::Env env, const uint8_t* data, size_t length) {
  Napi::Object o = Napi::Object::New(env);
  uint32_t code = length >= 4 ? Load<uint32_t>(data) : 0;
  auto setErrno = [&](int32_t negative) {
    o.Set("errno", -negative);
    o.Set("code", negative < 0 ? Napi::Value(Napi::String::New(env, ErrnoName(-negative))) : env.Null());
  };
  if (code == kEventAcknowledge && length == sizeof(AckEvent)) {
    o.Set("type", "ack");
    setErrno(Load<AckEvent>(data).result);
  } else if (code == kEventHalffill && length == sizeof(HalffillEvent)) {
    o.Set("type", "halffill");
    o.Set("filledBytes", Napi::BigInt::New(env, Load<HalffillEvent>(data).filled_bytes));
  } else if (code == kEventOverflow && length == sizeof(OverflowEvent)) {
    OverflowEvent e = Load<OverflowEvent>(data);
    o.Set("type", "overflow");
    setErrno(e.error);
    o.Set("filledBytes", Napi::BigInt::New(env, e.filled_bytes));
  } else if (code == kEventTerminate && length == sizeof(TerminateEvent)) {
    o.Set("type", "terminate");
    o.Set("filledBytes", Napi::BigInt::New(env, Load<TerminateEvent>(data).filled_sectors * kSectorSize));
  } else {  // never sent by 13.1 (INVALID 0xFF included): surfaced raw rather than dropped
    o.Set("type", "unknown");
    o.Set("code", length >= 4 ? Napi::Value(Napi::Number::New(env, code)) : env.Null());
    o.Set("bytes", Napi::Buffer<uint8_t>::Copy(env, data, length));
  }
  return o;
}

void Register(Napi::Env env, Napi::Object exports) {
  Napi::Object sizes = ioctl::ExportAbi(env, exports, "veeamsnap", kTable, Encode, Decode);
  sizes.Set("DevId", sizeof(DevId));
  sizes.Set("ByteRange", sizeof(ByteRange));
  sizes.Set("CbtInfo", sizeof(CbtInfo));
  sizes.Set("ImageInfo", sizeof(ImageInfo));
  sizes.Set("KernelEntry", sizeof(KernelEntry));
  sizes.Set("INITIATE", sizeof(InitiateHeader));
  sizes.Set("NEXT_PORTION", sizeof(NextPortionHeader));
  sizes.Set("NEXT_PORTION_MULTIDEV", sizeof(NextPortionMultidevHeader));
  sizes.Set("ACKNOWLEDGE", sizeof(AckEvent));
  sizes.Set("HALFFILL", sizeof(HalffillEvent));
  sizes.Set("OVERFLOW", sizeof(OverflowEvent));
  sizes.Set("TERMINATE", sizeof(TerminateEvent));
  exports.Set("VeeamsnapControlHandle", ioctl::ControlHandle<kTable>::Define(env, "VeeamsnapControlHandle"));
}

}  // namespace coriolis::veeamsnap

namespace coriolis {
void InitVeeamsnap(Napi::Env env, Napi::Object exports) { veeamsnap::Register(env, exports); }
}  // namespace coriolis
