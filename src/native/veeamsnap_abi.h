// The veeamsnap userspace ABI (module 5.0.2 to 13.1): request numbers, byte-packed argument
// layouts, the snapstore pipe's messages and events. Source of truth: the module's ioctl
// header (github.com/veeam/veeamsnap) and what a running module 13.1.0.252 showed, which wins.
// Every size and key offset below is static_asserted against them, because a natural-alignment
// layout silently gives another request number (ENOTTY) or garbage.
#pragma once

#include <napi.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace coriolis::veeamsnap {

// There is no compat_ioctl: a 32-bit process gets ENOTTY for everything.
static_assert(sizeof(void*) == 8, "veeamsnap has no compat_ioctl: build the addon 64-bit");

// ---- _IOC encoding (type 'V'). The module compares the whole number exactly, and several
// directions are "wrong" relative to the data flow, so each number is asserted, not derived.
inline constexpr uint32_t kIocWrite = 1;
inline constexpr uint32_t kIocRead = 2;
constexpr uint32_t Ioc(uint32_t dir, uint32_t nr, size_t size) {
  return dir << 30 | static_cast<uint32_t>(size) << 16 | uint32_t{'V'} << 8 | nr;
}

// ---- Limits and special values.
inline constexpr uint32_t kSectorSize = 512;          // the kernel truncates byte ranges to these
inline constexpr int32_t kMaxMajor = 1 << 12;         // kernel MKDEV: major << 20 | minor
inline constexpr int32_t kMaxMinor = 1 << 20;
inline constexpr int32_t kMaxImages = 2048;           // image minors 0..2047
inline constexpr size_t kKernelEntryNameMax = 255;    // longer names are rejected by the module
inline constexpr uint64_t kCleanupUnknownId = ~uint64_t{0};  // filled_bytes for an unknown id
inline constexpr size_t kEventReadBuffer = 64;        // a smaller read buffer than the event: ENODATA

// Compatibility flag bits (IOCTL_COMPATIBILITY_FLAGS).
inline constexpr uint64_t kCompatSnapstore = 0x1;
inline constexpr uint64_t kCompatBtrfs = 0x2;
inline constexpr uint64_t kCompatMultidev = 0x4;
inline constexpr uint64_t kCompatKernelEntries = 0x8;

// Pipe command codes (user -> kernel, write()) and event codes (kernel -> user, read()).
inline constexpr uint32_t kCmdInitiate = 0x21;
inline constexpr uint32_t kCmdNextPortion = 0x22;
inline constexpr uint32_t kCmdNextPortionMultidev = 0x23;
inline constexpr uint32_t kEventAcknowledge = 0x01;
inline constexpr uint32_t kEventHalffill = 0x41;
inline constexpr uint32_t kEventOverflow = 0x42;
inline constexpr uint32_t kEventTerminate = 0x43;

// ---- Layouts. Pointer fields are u64 holding a user address (filled in by the addon).
#pragma pack(push, 1)

struct DevId {
  int32_t major;
  int32_t minor;
};
inline constexpr DevId kMemoryStorage{0, 0};      // snapstore storage (0,0): kernel memory
inline constexpr DevId kMultidevStorage{-1, -1};  // snapstore storage (-1,-1): multi-device

struct ByteRange {  // bytes on the named device, right exclusive
  uint64_t left;
  uint64_t right;
};

struct CbtInfo {  // stride 37, not 40
  DevId dev;
  uint64_t dev_capacity;  // bytes (Appendix C)
  uint32_t cbt_map_size;
  uint8_t snap_number;
  uint8_t generation_id[16];
};

struct ImageInfo {
  DevId original;
  DevId image;
};

struct KernelEntry {
  uint64_t addr;
  uint64_t name;  // -> NUL-terminated name
};

struct CompatibilityFlagsArg {
  uint64_t flags;
};

struct VersionArg {
  uint16_t major;
  uint16_t minor;
  uint16_t revision;
  uint16_t build;
};

struct TrackingCollectArg {
  uint32_t count;
  uint64_t cbt_info;  // -> CbtInfo[count], or 0 for the count query
};

struct TrackingBlockSizeArg {
  uint32_t block_size;
};

struct ReadCbtBitmapArg {
  DevId dev;
  uint32_t offset;
  uint32_t length;
  uint64_t buffer;  // -> uint8_t[length]
};

struct SetKernelEntriesArg {
  uint32_t count;
  uint64_t entries;  // -> KernelEntry[count]
};

struct GetUnresolvedKernelEntriesArg {
  char names[4096];
};

struct SnapshotCreateArg {
  uint64_t snapshot_id;  // out
  uint32_t count;
  uint64_t devices;  // -> DevId[count]
};

struct SnapshotDestroyArg {
  uint64_t snapshot_id;
};

struct SnapshotErrnoArg {
  DevId dev;
  int32_t err_code;  // out: 0 or -errno
};

struct SnapstoreCreateArg {
  uint8_t id[16];
  DevId storage_dev;
  uint32_t count;
  uint64_t devices;  // -> DevId[count]
};

struct SnapstoreFileArg {
  uint8_t id[16];
  uint32_t range_count;
  uint64_t ranges;  // -> ByteRange[range_count]
};

struct SnapstoreMemoryArg {
  uint8_t id[16];
  uint64_t size;
};

struct SnapstoreCleanupArg {
  uint8_t id[16];
  uint64_t filled_bytes;  // out
};

struct SnapstoreFileMultidevArg {
  uint8_t id[16];
  DevId storage_dev;
  uint32_t range_count;
  uint64_t ranges;  // -> ByteRange[range_count]
};

struct CollectSnapshotImagesArg {
  int32_t count;    // in: capacity; out: real count (written back even on ENODATA)
  uint64_t images;  // -> ImageInfo[count]
};

// Pipe commands: a header followed by its array, in one write().
struct InitiateHeader {  // + DevId[dev_count]
  uint32_t code;
  uint8_t id[16];
  uint64_t empty_limit;  // bytes
  DevId storage_dev;
  uint32_t dev_count;
};

struct NextPortionHeader {  // + ByteRange[range_count]
  uint32_t code;
  uint8_t id[16];
  uint32_t range_count;
};

struct NextPortionMultidevHeader {  // + ByteRange[range_count]
  uint32_t code;
  uint8_t id[16];
  DevId storage_dev;
  uint32_t range_count;
};

// Pipe events: exactly one per read(). 64-bit values are two u32 words, low first, which on
// this little-endian target is an unaligned u64.
struct AckEvent {
  uint32_t code;
  int32_t result;  // 0 or -errno
};

struct HalffillEvent {
  uint32_t code;
  uint64_t filled_bytes;
};

struct OverflowEvent {
  uint32_t code;
  int32_t error;  // -errno (always -EINVAL in 13.1)
  uint64_t filled_bytes;
};

struct TerminateEvent {
  uint32_t code;
  uint64_t filled_sectors;  // 512-byte sectors, unlike the other events (Appendix C)
};

#pragma pack(pop)

// Sizes (spec §2.1, §2.2-2.20, §4.2-4.3, Appendix C) and the offsets that packing moves.
static_assert(sizeof(DevId) == 8);
static_assert(sizeof(ByteRange) == 16);
static_assert(sizeof(CbtInfo) == 37);
static_assert(offsetof(CbtInfo, dev_capacity) == 8);
static_assert(offsetof(CbtInfo, cbt_map_size) == 16);
static_assert(offsetof(CbtInfo, snap_number) == 20);
static_assert(offsetof(CbtInfo, generation_id) == 21);
static_assert(sizeof(ImageInfo) == 16);
static_assert(offsetof(ImageInfo, image) == 8);
static_assert(sizeof(KernelEntry) == 16);
static_assert(offsetof(KernelEntry, name) == 8);
static_assert(sizeof(CompatibilityFlagsArg) == 8);
static_assert(sizeof(VersionArg) == 8);
static_assert(offsetof(VersionArg, build) == 6);
static_assert(sizeof(TrackingCollectArg) == 12);
static_assert(offsetof(TrackingCollectArg, cbt_info) == 4);
static_assert(sizeof(TrackingBlockSizeArg) == 4);
static_assert(sizeof(ReadCbtBitmapArg) == 24);
static_assert(offsetof(ReadCbtBitmapArg, offset) == 8);
static_assert(offsetof(ReadCbtBitmapArg, length) == 12);
static_assert(offsetof(ReadCbtBitmapArg, buffer) == 16);
static_assert(sizeof(SetKernelEntriesArg) == 12);
static_assert(offsetof(SetKernelEntriesArg, entries) == 4);
static_assert(sizeof(GetUnresolvedKernelEntriesArg) == 4096);
static_assert(sizeof(SnapshotCreateArg) == 20);
static_assert(offsetof(SnapshotCreateArg, count) == 8);
static_assert(offsetof(SnapshotCreateArg, devices) == 12);
static_assert(sizeof(SnapshotDestroyArg) == 8);
static_assert(sizeof(SnapshotErrnoArg) == 12);
static_assert(offsetof(SnapshotErrnoArg, err_code) == 8);
static_assert(sizeof(SnapstoreCreateArg) == 36);
static_assert(offsetof(SnapstoreCreateArg, storage_dev) == 16);
static_assert(offsetof(SnapstoreCreateArg, count) == 24);
static_assert(offsetof(SnapstoreCreateArg, devices) == 28);
static_assert(sizeof(SnapstoreFileArg) == 28);
static_assert(offsetof(SnapstoreFileArg, range_count) == 16);
static_assert(offsetof(SnapstoreFileArg, ranges) == 20);
static_assert(sizeof(SnapstoreMemoryArg) == 24);
static_assert(offsetof(SnapstoreMemoryArg, size) == 16);
static_assert(sizeof(SnapstoreCleanupArg) == 24);
static_assert(offsetof(SnapstoreCleanupArg, filled_bytes) == 16);
static_assert(sizeof(SnapstoreFileMultidevArg) == 36);
static_assert(offsetof(SnapstoreFileMultidevArg, storage_dev) == 16);
static_assert(offsetof(SnapstoreFileMultidevArg, range_count) == 24);
static_assert(offsetof(SnapstoreFileMultidevArg, ranges) == 28);
static_assert(sizeof(CollectSnapshotImagesArg) == 12);
static_assert(offsetof(CollectSnapshotImagesArg, images) == 4);
static_assert(sizeof(InitiateHeader) == 40);
static_assert(offsetof(InitiateHeader, empty_limit) == 20);
static_assert(offsetof(InitiateHeader, storage_dev) == 28);
static_assert(offsetof(InitiateHeader, dev_count) == 36);
static_assert(sizeof(NextPortionHeader) == 24);
static_assert(offsetof(NextPortionHeader, range_count) == 20);
static_assert(sizeof(NextPortionMultidevHeader) == 32);
static_assert(offsetof(NextPortionMultidevHeader, storage_dev) == 20);
static_assert(offsetof(NextPortionMultidevHeader, range_count) == 28);
static_assert(sizeof(AckEvent) == 8);
static_assert(sizeof(HalffillEvent) == 12);
static_assert(sizeof(OverflowEvent) == 16);
static_assert(offsetof(OverflowEvent, filled_bytes) == 8);
static_assert(sizeof(TerminateEvent) == 12);
static_assert(kEventReadBuffer >= sizeof(OverflowEvent));

// ---- Request numbers (spec §2.0.1), each built from its packed size and checked.
inline constexpr uint32_t kIoctlCompatibilityFlags = Ioc(kIocWrite, 0x00, sizeof(CompatibilityFlagsArg));
inline constexpr uint32_t kIoctlGetVersion = Ioc(kIocWrite, 0x01, sizeof(VersionArg));
inline constexpr uint32_t kIoctlTrackingAdd = Ioc(kIocWrite, 0x02, sizeof(DevId));
inline constexpr uint32_t kIoctlTrackingRemove = Ioc(kIocWrite, 0x03, sizeof(DevId));
inline constexpr uint32_t kIoctlTrackingCollect = Ioc(kIocWrite, 0x04, sizeof(TrackingCollectArg));
inline constexpr uint32_t kIoctlTrackingBlockSize = Ioc(kIocWrite, 0x05, sizeof(TrackingBlockSizeArg));
inline constexpr uint32_t kIoctlTrackingReadCbtBitmap = Ioc(kIocRead, 0x06, sizeof(ReadCbtBitmapArg));
inline constexpr uint32_t kIoctlSetKernelEntries = Ioc(kIocWrite, 0x08, sizeof(SetKernelEntriesArg));
inline constexpr uint32_t kIoctlGetUnresolvedKernelEntries =
    Ioc(kIocRead, 0x09, sizeof(GetUnresolvedKernelEntriesArg));
inline constexpr uint32_t kIoctlSnapshotCreate = Ioc(kIocWrite, 0x10, sizeof(SnapshotCreateArg));
inline constexpr uint32_t kIoctlSnapshotDestroy = Ioc(kIocRead, 0x11, sizeof(SnapshotDestroyArg));
inline constexpr uint32_t kIoctlSnapshotErrno = Ioc(kIocWrite, 0x12, sizeof(SnapshotErrnoArg));
inline constexpr uint32_t kIoctlSnapstoreCreate = Ioc(kIocRead, 0x28, sizeof(SnapstoreCreateArg));
inline constexpr uint32_t kIoctlSnapstoreFile = Ioc(kIocRead, 0x29, sizeof(SnapstoreFileArg));
inline constexpr uint32_t kIoctlSnapstoreMemory = Ioc(kIocRead, 0x2A, sizeof(SnapstoreMemoryArg));
inline constexpr uint32_t kIoctlSnapstoreCleanup = Ioc(kIocWrite, 0x2B, sizeof(SnapstoreCleanupArg));
inline constexpr uint32_t kIoctlSnapstoreFileMultidev =
    Ioc(kIocRead, 0x2C, sizeof(SnapstoreFileMultidevArg));
inline constexpr uint32_t kIoctlCollectSnapshotImages =
    Ioc(kIocWrite, 0x30, sizeof(CollectSnapshotImagesArg));

static_assert(kIoctlCompatibilityFlags == 0x40085600);
static_assert(kIoctlGetVersion == 0x40085601);
static_assert(kIoctlTrackingAdd == 0x40085602);
static_assert(kIoctlTrackingRemove == 0x40085603);
static_assert(kIoctlTrackingCollect == 0x400C5604);
static_assert(kIoctlTrackingBlockSize == 0x40045605);
static_assert(kIoctlTrackingReadCbtBitmap == 0x80185606);
static_assert(kIoctlSetKernelEntries == 0x400C5608);
static_assert(kIoctlGetUnresolvedKernelEntries == 0x90005609);
static_assert(kIoctlSnapshotCreate == 0x40145610);
static_assert(kIoctlSnapshotDestroy == 0x80085611);
static_assert(kIoctlSnapshotErrno == 0x400C5612);
static_assert(kIoctlSnapstoreCreate == 0x80245628);
static_assert(kIoctlSnapstoreFile == 0x801C5629);
static_assert(kIoctlSnapstoreMemory == 0x8018562A);
static_assert(kIoctlSnapstoreCleanup == 0x4018562B);
static_assert(kIoctlSnapstoreFileMultidev == 0x8024562C);
static_assert(kIoctlCollectSnapshotImages == 0x400C5630);

// ---- Helpers of the pipe protocol, shared by veeamsnap.cc (which implements them, and whose
// test entries use them) and the snapstore pipe (snapstore_pipe.cc).

// Encodes one pipe command ("INITIATE", "NEXT_PORTION", "NEXT_PORTION_MULTIDEV") into the
// exact bytes of its write(). Throws a JS TypeError/RangeError on bad arguments.
std::vector<uint8_t> EncodePipeCommand(Napi::Env env, const std::string& name, Napi::Object args);

// Decodes the bytes of one read() from the pipe into an event object
// ({type: 'ack' | 'halffill' | 'overflow' | 'terminate' | 'unknown', ...}).
Napi::Object DecodePipeEvent(Napi::Env env, const uint8_t* data, size_t length);

}  // namespace coriolis::veeamsnap
