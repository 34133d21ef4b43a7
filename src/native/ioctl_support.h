// What the two ioctl-driven control devices (veeamsnap.cc, blksnap.cc) share: JavaScript values
// checked into ABI fields, an ioctl argument with the user buffers its pointer fields refer to,
// the table entry of one ioctl, the control handle that runs them on the libuv pool, and the
// encode/decode entries the ABI tests use. Each module keeps only its own ABI: structs, request
// numbers, encoders and decoders.
#pragma once
#include <fcntl.h>
#include <napi.h>
#include <sys/ioctl.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "syscall_support.h"

namespace coriolis::ioctl {

// ---- JavaScript values -> ABI fields ---------------------------------------------------------

[[noreturn]] inline void ThrowType(Napi::Env env, const std::string& what, const char* expected) {
  throw Napi::TypeError::New(env, what + " must be " + expected);
}

[[noreturn]] inline void ThrowRange(Napi::Env env, const std::string& what, const char* expected) {
  throw Napi::RangeError::New(env, what + " must be " + expected);
}

inline Napi::Object ToObject(Napi::Env env, Napi::Value v, const std::string& what) {
  if (!v.IsObject()) ThrowType(env, what, "an object");
  return v.As<Napi::Object>();
}

inline uint32_t ToU32(Napi::Env env, Napi::Value v, const std::string& what, double limit = 4294967295.0) {
  if (!v.IsNumber()) ThrowType(env, what, "a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= 0 && d <= limit && std::trunc(d) == d)) ThrowRange(env, what, "an integer in range");
  return static_cast<uint32_t>(d);
}

// Sizes and addresses: a bigint, or a number that is a safe integer (never rounded).
inline uint64_t ToU64(Napi::Env env, Napi::Value v, const std::string& what) {
  if (v.IsBigInt()) {
    bool lossless = false;
    uint64_t x = v.As<Napi::BigInt>().Uint64Value(&lossless);
    if (!lossless) ThrowRange(env, what, "an unsigned 64-bit integer");
    return x;
  }
  if (v.IsNumber()) {
    double d = v.As<Napi::Number>().DoubleValue();
    if (!(d >= 0 && d <= 9007199254740991.0 && std::trunc(d) == d)) ThrowRange(env, what, "a non-negative safe integer");
    return static_cast<uint64_t>(d);
  }
  ThrowType(env, what, "a bigint or a number");
}

template <typename T>
T Load(const uint8_t* p) {
  T value;
  std::memcpy(&value, p, sizeof value);
  return value;
}

// ---- An ioctl argument and the user buffers its pointer fields refer to ----------------------

// Pointer fields are filled with this tag plus the target block's index when encoding for the
// tests, so a test sees both where each pointer sits and what it points to.
constexpr uint64_t kPointerPlaceholder = 0x5054520000000000;  // "\0\0\0\0\0RTP" little-endian

class Arg {
 public:
  struct Pointer {
    size_t block;
    size_t offset;
    size_t target;
  };

  // Appends a block and returns its index; block 0 is what the ioctl argument points to.
  size_t Add(const void* data, size_t size) {
    const uint8_t* p = static_cast<const uint8_t*>(data);
    blocks_.emplace_back(p, p + size);
    return blocks_.size() - 1;
  }
  template <typename T>
  size_t Add(const T& value) {
    return Add(&value, sizeof value);
  }
  template <typename T>
  size_t AddArray(const std::vector<T>& values) {
    return Add(values.data(), values.size() * sizeof(T));
  }
  size_t AddZeroed(size_t size) {
    blocks_.emplace_back(size, 0);
    return blocks_.size() - 1;
  }
  // The u64 at `offset` in `block` holds the address of block `target`.
  void Point(size_t block, size_t offset, size_t target) { pointers_.push_back({block, offset, target}); }

  void Link() {
    for (const Pointer& p : pointers_) Store(p, static_cast<uint64_t>(reinterpret_cast<uintptr_t>(blocks_[p.target].data())));
  }
  void LinkPlaceholders() {
    for (const Pointer& p : pointers_) Store(p, kPointerPlaceholder | p.target);
  }

  uint8_t* Data(size_t block) { return blocks_[block].data(); }
  const std::vector<uint8_t>& Block(size_t block) const { return blocks_.at(block); }
  size_t BlockCount() const { return blocks_.size(); }
  const std::vector<Pointer>& Pointers() const { return pointers_; }

  template <typename T>
  T Root() const {
    return Load<T>(blocks_.at(0).data());
  }

 private:
  void Store(const Pointer& p, uint64_t value) { std::memcpy(blocks_[p.block].data() + p.offset, &value, 8); }

  std::vector<std::vector<uint8_t>> blocks_;
  std::vector<Pointer> pointers_;
};

struct Call {
  Arg arg;
  long rc = 0;  // the ioctl's return value (a byte count for some)
};

// One ioctl: how its argument is built from JavaScript, run (on a pool thread: 0 or an errno)
// and read back.
struct Def {
  const char* name;
  uint32_t request;
  size_t size;  // packed size of the argument, for the ABI tests
  Arg (*encode)(Napi::Env env, Napi::Object args);
  int (*run)(int fd, const Def& def, Call& call);
  Napi::Value (*decode)(Napi::Env env, const Call& call);
};

// ---- Running an ioctl (pool thread) ----------------------------------------------------------

// Links the argument's pointers and makes the call: 0 or an errno.
inline int RunOnce(int fd, uint32_t request, Call& call) {
  call.arg.Link();
  call.rc = ::ioctl(fd, request, call.arg.Data(0));
  return call.rc < 0 ? errno : 0;
}

inline int RunSingle(int fd, const Def& def, Call& call) { return RunOnce(fd, def.request, call); }

// Enumerations are two-phase: an empty array asks for the count, then the fetch. A count that
// grew in between fails the fetch with `tooSmall` (the kernel writes nothing then), so a
// bounded number of rounds counts again. `Encode(capacity)` builds the argument; `Root` is its
// fixed part, whose `count` the kernel fills in.
constexpr int kEnumerationRounds = 8;

template <typename Root, Arg (*Encode)(uint32_t)>
int RunEnumeration(int fd, const Def& def, Call& call, int tooSmall) {
  int err = 0;
  for (int round = 0; round < kEnumerationRounds; round++) {
    call.arg = Encode(0);
    if ((err = RunOnce(fd, def.request, call)) != 0) return err;
    uint32_t count = call.arg.Root<Root>().count;
    if (count == 0) return 0;
    call.arg = Encode(count);
    err = RunOnce(fd, def.request, call);
    if (err != tooSmall) return err;
  }
  return err;
}

// The `count` records of `size` bytes in block 1 of a call's argument (an enumeration's array),
// checked to fit before anything reads them; null for none.
inline const uint8_t* Records(Napi::Env env, const Call& call, int64_t count, size_t size) {
  if (count == 0) return nullptr;
  if (count < 0 || call.arg.BlockCount() < 2 || call.arg.Block(1).size() < static_cast<size_t>(count) * size) {
    throw Napi::RangeError::New(env, "record count exceeds the record buffer");
  }
  return call.arg.Block(1).data();
}

// A module's table of ioctls, and what it calls itself in messages.
struct Table {
  const char* module;
  const Def* begin;
  const Def* end;

  const Def* Find(const std::string& name) const {
    for (const Def* def = begin; def != end; ++def) {
      if (name == def->name) return def;
    }
    return nullptr;
  }
  // The ioctl a JavaScript name names; a TypeError for anything else.
  const Def& Require(Napi::Env env, Napi::Value name) const {
    if (!name.IsString()) ThrowType(env, "name", "a string");
    const Def* def = Find(name.As<Napi::String>());
    if (def == nullptr) throw Napi::TypeError::New(env, std::string("unknown ") + module + " ioctl " + name.As<Napi::String>().Utf8Value());
    return *def;
  }
};

inline Napi::Object ArgsObject(Napi::Env env, Napi::Value v) {
  return v.IsUndefined() ? Napi::Object::New(env) : ToObject(env, v, "args");
}

// {blocks: Buffer[], pointers: {block, offset, target}[]}: an argument as the ABI tests read it.
inline Napi::Object EncodedToJs(Napi::Env env, Arg& arg) {
  Napi::Object o = Napi::Object::New(env);
  Napi::Array blocks = Napi::Array::New(env, arg.BlockCount());
  for (size_t i = 0; i < arg.BlockCount(); i++) blocks.Set(i, Napi::Buffer<uint8_t>::Copy(env, arg.Data(i), arg.Block(i).size()));
  Napi::Array pointers = Napi::Array::New(env, arg.Pointers().size());
  for (size_t i = 0; i < arg.Pointers().size(); i++) {
    Napi::Object p = Napi::Object::New(env);
    p.Set("block", arg.Pointers()[i].block);
    p.Set("offset", arg.Pointers()[i].offset);
    p.Set("target", arg.Pointers()[i].target);
    pointers.Set(i, p);
  }
  o.Set("blocks", blocks);
  o.Set("pointers", pointers);
  return o;
}

// decode(name, blocks: Buffer[], returnValue = 0): what the ioctl would resolve with, had the
// kernel left these bytes in its argument and buffers.
inline Napi::Value DecodeForTest(const Table& table, const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const Def& def = table.Require(env, info[0]);
  if (!info[1].IsArray()) ThrowType(env, "blocks", "an array of Buffers");
  Napi::Array blocks = info[1].As<Napi::Array>();
  Call call;
  for (uint32_t i = 0; i < blocks.Length(); i++) {
    Napi::Value b = blocks.Get(i);
    if (!b.IsBuffer()) ThrowType(env, "blocks", "an array of Buffers");
    call.arg.Add(b.As<Napi::Buffer<uint8_t>>().Data(), b.As<Napi::Buffer<uint8_t>>().Length());
  }
  if (call.arg.BlockCount() == 0 || call.arg.Block(0).size() != def.size) {
    throw Napi::RangeError::New(env, "blocks[0] must have the argument's packed size");
  }
  call.rc = info[2].IsUndefined() ? 0 : static_cast<long>(ToU32(env, info[2], "returnValue"));
  return def.decode(env, call);
}

// Exports the ABI for its tests: <prefix>Requests and <prefix>Sizes (each ioctl's packed size;
// the module adds its structs to the object returned), <prefix>PointerPlaceholder, and the
// test entries <prefix>Encode and <prefix>Decode.
inline Napi::Object ExportAbi(Napi::Env env, Napi::Object exports, const std::string& prefix, const Table& table,
                              Napi::Value (*encode)(const Napi::CallbackInfo&), Napi::Value (*decode)(const Napi::CallbackInfo&)) {
  Napi::Object requests = Napi::Object::New(env);
  Napi::Object sizes = Napi::Object::New(env);
  for (const Def* def = table.begin; def != table.end; ++def) {
    requests.Set(def->name, def->request);
    sizes.Set(def->name, def->size);
  }
  exports.Set(prefix + "Requests", requests);
  exports.Set(prefix + "Sizes", sizes);
  exports.Set(prefix + "PointerPlaceholder", Napi::BigInt::New(env, kPointerPlaceholder));
  exports.Set(prefix + "Encode", Napi::Function::New(env, encode, prefix + "Encode"));
  exports.Set(prefix + "Decode", Napi::Function::New(env, decode, prefix + "Decode"));
  return sizes;
}

// ---- The control handle ----------------------------------------------------------------------

// new <Name>ControlHandle(path); open(): Promise<void>; ioctl(name, args): Promise<result>;
// close(): void (calls in flight keep the descriptor until they finish). `TableOf` names the
// module's table, so that each module gets its own JavaScript class.
template <const Table& TableOf>
class ControlHandle : public Napi::ObjectWrap<ControlHandle<TableOf>> {
 public:
  static Napi::Function Define(Napi::Env env, const char* className) {
    return ControlHandle::DefineClass(env, className,
                                      {ControlHandle::InstanceMethod("open", &ControlHandle::Open),
                                       ControlHandle::InstanceMethod("ioctl", &ControlHandle::Ioctl),
                                       ControlHandle::InstanceMethod("close", &ControlHandle::Close)});
  }

  explicit ControlHandle(const Napi::CallbackInfo& info) : Napi::ObjectWrap<ControlHandle<TableOf>>(info) {
    if (!info[0].IsString()) ThrowType(info.Env(), "path", "a string");
    path_ = info[0].As<Napi::String>();
  }

 private:
  Napi::Value Open(const Napi::CallbackInfo& info) {
    auto opened = std::make_shared<std::shared_ptr<Fd>>();
    std::string path = path_;
    return QueueSyscall(
        info.Env(), "open", path_,
        [opened, path] {
          int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
          if (fd < 0) return errno;
          *opened = std::make_shared<Fd>(fd);
          return 0;
        },
        [opened, slot = slot_](Napi::Env env) {
          *slot = *opened;
          return env.Undefined();
        });
  }

  Napi::Value Ioctl(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const Def* def = &TableOf.Require(env, info[0]);
    auto call = std::make_shared<Call>();
    call->arg = def->encode(env, ArgsObject(env, info[1]));
    std::shared_ptr<Fd> fd = *slot_;
    return QueueSyscall(
        env, def->name, path_, [def, call, fd] { return fd ? def->run(fd->fd, *def, *call) : EBADF; },
        [def, call](Napi::Env env) { return def->decode(env, *call); });
  }

  void Close(const Napi::CallbackInfo&) { slot_->reset(); }

  std::string path_;
  // Touched on the JS thread only; workers hold their own reference to the Fd.
  std::shared_ptr<std::shared_ptr<Fd>> slot_ = std::make_shared<std::shared_ptr<Fd>>();
};

}  // namespace coriolis::ioctl
