// The blksnap v1 ("standalone") userspace ABI of Veeam's veeamblksnap module, branches VAL-6.0
// to VAL-6.3.1 (kernels 5.10 to 6.13): request numbers and argument layouts of the ioctls on
// /dev/veeamblksnap. Described in docs/blksnap.md. Unlike veeamsnap's, these structs are NOT
// packed: the module's header uses natural alignment, so every size and offset the kernel
// relies on is static_asserted here (a wrong size silently gives another request number).
#pragma once

#include <cstddef>
#include <cstdint>

namespace coriolis::blksnap {

static_assert(sizeof(void*) == 8, "blksnap has no compat_ioctl: build the addon 64-bit");

// _IOC encoding, type 'V' (the same letter as veeamsnap: never send one module's numbers to the
// other's device). The module dispatches on the number field alone, so each full number is
// asserted below rather than trusted.
inline constexpr uint32_t kIocWrite = 1;
inline constexpr uint32_t kIocRead = 2;
constexpr uint32_t Ioc(uint32_t dir, uint32_t nr, size_t size) {
  return dir << 30 | static_cast<uint32_t>(size) << 16 | uint32_t{'V'} << 8 | nr;
}

inline constexpr uint32_t kSectorSize = 512;  // ranges and the low-space request are in sectors
inline constexpr int32_t kMaxMinor = 1 << 20;  // kernel MKDEV: a larger field names another device
inline constexpr uint32_t kMaxMajor = 1 << 12;
inline constexpr size_t kModNameLimit = 32;
inline constexpr uint32_t kEventLowFreeSpace = 0;
inline constexpr uint32_t kEventCorrupted = 1;

struct DevId {  // struct blk_snap_dev_t
  uint32_t mj;
  uint32_t mn;
};
struct SectorRange {  // struct blk_snap_block_range
  uint64_t sector_offset;
  uint64_t sector_count;
};
struct Uuid {  // uuid_t: 16 bytes, byte-aligned
  uint8_t b[16];
};

struct VersionArg {  // struct blk_snap_version
  uint16_t major;
  uint16_t minor;
  uint16_t revision;
  uint16_t build;
};
struct ModArg {  // struct blk_snap_mod
  uint64_t compatibility_flags;
  uint8_t name[kModNameLimit];
};
struct TrackerRemoveArg {
  DevId dev_id;
};
struct CbtInfo {  // struct blk_snap_cbt_info: 4 padding bytes before device_capacity, 3 at the end
  DevId dev_id;
  uint32_t blk_size;
  uint64_t device_capacity;  // bytes
  uint32_t blk_count;
  Uuid generation_id;
  uint8_t snap_number;
};
struct TrackerCollectArg {
  uint32_t count;
  uint64_t cbt_info_array;  // -> CbtInfo[count]; 0 asks for the count
};
struct ReadCbtMapArg {  // struct blk_snap_tracker_read_cbt_bitmap
  DevId dev_id;
  uint32_t offset;
  uint32_t length;
  uint64_t buff;  // -> uint8_t[length]
};
struct SnapshotCreateArg {
  uint32_t count;
  uint64_t dev_id_array;  // -> DevId[count]
  Uuid id;                // out
};
struct SnapshotIdArg {  // destroy and take
  Uuid id;
};
struct AppendStorageArg {
  Uuid id;
  DevId dev_id;
  uint32_t count;
  uint64_t ranges;  // -> SectorRange[count]
};
struct SnapshotCollectArg {
  uint32_t count;
  uint64_t ids;  // -> Uuid[count]; 0 asks for the count
};
struct ImageInfo {
  DevId orig_dev_id;
  DevId image_dev_id;
};
struct CollectImagesArg {
  Uuid id;
  uint32_t count;
  uint64_t image_info_array;  // -> ImageInfo[count]; 0 asks for the count
};
struct WaitEventArg {  // struct blk_snap_snapshot_event: one page
  Uuid id;
  uint32_t timeout_ms;
  uint32_t code;  // out
  int64_t time_label;  // out, ktime in ns
  uint8_t data[4096 - 32];  // out
};
struct LowFreeSpaceData {  // data of kEventLowFreeSpace
  uint64_t requested_nr_sect;
};
struct CorruptedData {  // data of kEventCorrupted
  DevId orig_dev_id;
  int32_t err_code;  // negative errno
};

static_assert(sizeof(DevId) == 8);
static_assert(sizeof(SectorRange) == 16);
static_assert(sizeof(Uuid) == 16 && alignof(Uuid) == 1);
static_assert(sizeof(VersionArg) == 8);
static_assert(sizeof(ModArg) == 40);
static_assert(sizeof(TrackerRemoveArg) == 8);
static_assert(sizeof(CbtInfo) == 48);
static_assert(offsetof(CbtInfo, blk_size) == 8 && offsetof(CbtInfo, device_capacity) == 16);
static_assert(offsetof(CbtInfo, blk_count) == 24 && offsetof(CbtInfo, generation_id) == 28);
static_assert(offsetof(CbtInfo, snap_number) == 44);
static_assert(sizeof(TrackerCollectArg) == 16 && offsetof(TrackerCollectArg, cbt_info_array) == 8);
static_assert(sizeof(ReadCbtMapArg) == 24 && offsetof(ReadCbtMapArg, buff) == 16);
static_assert(sizeof(SnapshotCreateArg) == 32);
static_assert(offsetof(SnapshotCreateArg, dev_id_array) == 8 && offsetof(SnapshotCreateArg, id) == 16);
static_assert(sizeof(SnapshotIdArg) == 16);
static_assert(sizeof(AppendStorageArg) == 40);
static_assert(offsetof(AppendStorageArg, dev_id) == 16 && offsetof(AppendStorageArg, count) == 24);
static_assert(offsetof(AppendStorageArg, ranges) == 32);
static_assert(sizeof(SnapshotCollectArg) == 16 && offsetof(SnapshotCollectArg, ids) == 8);
static_assert(sizeof(ImageInfo) == 16);
static_assert(sizeof(CollectImagesArg) == 32);
static_assert(offsetof(CollectImagesArg, count) == 16 && offsetof(CollectImagesArg, image_info_array) == 24);
static_assert(sizeof(WaitEventArg) == 4096);
static_assert(offsetof(WaitEventArg, timeout_ms) == 16 && offsetof(WaitEventArg, code) == 20);
static_assert(offsetof(WaitEventArg, time_label) == 24 && offsetof(WaitEventArg, data) == 32);
static_assert(sizeof(LowFreeSpaceData) == 8);
static_assert(sizeof(CorruptedData) == 12 && offsetof(CorruptedData, err_code) == 8);

// Numbers 0..11 are the module's table; 12 is past its end and the module's bounds check lets
// it through (docs/blksnap.md): never send it. 32 is the standalone-only modification query.
inline constexpr uint32_t kIoctlVersion = Ioc(kIocWrite, 0, sizeof(VersionArg));
inline constexpr uint32_t kIoctlTrackerRemove = Ioc(kIocWrite, 1, sizeof(TrackerRemoveArg));
inline constexpr uint32_t kIoctlTrackerCollect = Ioc(kIocWrite, 2, sizeof(TrackerCollectArg));
inline constexpr uint32_t kIoctlTrackerReadCbtMap = Ioc(kIocRead, 3, sizeof(ReadCbtMapArg));
inline constexpr uint32_t kIoctlSnapshotCreate = Ioc(kIocWrite, 5, sizeof(SnapshotCreateArg));
inline constexpr uint32_t kIoctlSnapshotDestroy = Ioc(kIocRead, 6, sizeof(SnapshotIdArg));
inline constexpr uint32_t kIoctlSnapshotAppendStorage = Ioc(kIocWrite, 7, sizeof(AppendStorageArg));
inline constexpr uint32_t kIoctlSnapshotTake = Ioc(kIocRead, 8, sizeof(SnapshotIdArg));
inline constexpr uint32_t kIoctlSnapshotCollect = Ioc(kIocWrite, 9, sizeof(SnapshotCollectArg));
inline constexpr uint32_t kIoctlSnapshotCollectImages = Ioc(kIocWrite, 10, sizeof(CollectImagesArg));
inline constexpr uint32_t kIoctlSnapshotWaitEvent = Ioc(kIocWrite, 11, sizeof(WaitEventArg));
inline constexpr uint32_t kIoctlMod = Ioc(kIocWrite, 32, sizeof(ModArg));

static_assert(kIoctlVersion == 0x40085600);
static_assert(kIoctlTrackerRemove == 0x40085601);
static_assert(kIoctlTrackerCollect == 0x40105602);
static_assert(kIoctlTrackerReadCbtMap == 0x80185603);
static_assert(kIoctlSnapshotCreate == 0x40205605);
static_assert(kIoctlSnapshotDestroy == 0x80105606);
static_assert(kIoctlSnapshotAppendStorage == 0x40285607);
static_assert(kIoctlSnapshotTake == 0x80105608);
static_assert(kIoctlSnapshotCollect == 0x40105609);
static_assert(kIoctlSnapshotCollectImages == 0x4020560A);
static_assert(kIoctlSnapshotWaitEvent == 0x5000560B);
static_assert(kIoctlMod == 0x40285620);

}  // namespace coriolis::blksnap
