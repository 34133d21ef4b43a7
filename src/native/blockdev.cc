// Block-device and filesystem queries: geometry, preallocated files and their extents, space.
#include <fcntl.h>
#include <linux/fiemap.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <napi.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <vector>

#include "device_geometry.h"
#include "errors.h"
#include "syscall_support.h"

namespace coriolis {

int DescribeOpenFile(int fd, DeviceGeometry* geometry, const char** failedSyscall) {
  struct statx stx = {};
  if (statx(fd, "", AT_EMPTY_PATH, STATX_TYPE | STATX_SIZE | STATX_DIOALIGN, &stx) != 0) {
    *failedSyscall = "statx";
    return errno;
  }
  if (S_ISBLK(stx.stx_mode)) {
    geometry->isBlockDevice = true;
    geometry->major = stx.stx_rdev_major;
    geometry->minor = stx.stx_rdev_minor;
    uint64_t size = 0;
    int logical = 0;
    unsigned int physical = 0;
    if (ioctl(fd, BLKGETSIZE64, &size) != 0) {
      *failedSyscall = "ioctl(BLKGETSIZE64)";
      return errno;
    }
    if (ioctl(fd, BLKSSZGET, &logical) != 0) {
      *failedSyscall = "ioctl(BLKSSZGET)";
      return errno;
    }
    if (ioctl(fd, BLKPBSZGET, &physical) != 0) {
      *failedSyscall = "ioctl(BLKPBSZGET)";
      return errno;
    }
    geometry->size = size;
    geometry->logicalBlockSize = static_cast<uint32_t>(logical);
    geometry->physicalBlockSize = physical;
    return 0;
  }
  if (S_ISREG(stx.stx_mode)) {
    geometry->isBlockDevice = false;
    geometry->major = stx.stx_dev_major;
    geometry->minor = stx.stx_dev_minor;
    geometry->size = stx.stx_size;
    // The filesystem's own O_DIRECT offset alignment when the kernel reports it (STATX_DIOALIGN,
    // Linux 6.1+). Otherwise its block size: always a multiple of the device's sector size, so
    // aligned I/O works, where the customary 512 fails on 4Kn disks.
    const bool knowsDirectIoAlignment =
        (stx.stx_mask & STATX_DIOALIGN) != 0 && stx.stx_dio_offset_align != 0;
    geometry->logicalBlockSize = knowsDirectIoAlignment ? stx.stx_dio_offset_align : stx.stx_blksize;
    geometry->physicalBlockSize = stx.stx_blksize;
    return 0;
  }
  *failedSyscall = "statx";
  return S_ISDIR(stx.stx_mode) ? EISDIR : ENOTBLK;
}

Napi::Object GeometryToObject(Napi::Env env, const DeviceGeometry& geometry) {
  Napi::Object result = Napi::Object::New(env);
  result.Set("kind", geometry.isBlockDevice ? "block" : "file");
  result.Set("size", static_cast<double>(geometry.size));
  result.Set("logicalBlockSize", geometry.logicalBlockSize);
  result.Set("physicalBlockSize", geometry.physicalBlockSize);
  result.Set("major", geometry.major);
  result.Set("minor", geometry.minor);
  return result;
}

namespace {

// O_NONBLOCK so that a FIFO given by mistake fails the type check instead of hanging the open.
Napi::Value QueryBlockDevice(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string path = ToPath(info, 0);
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) throw ErrnoError(env, errno, "open", path);
  DeviceGeometry geometry;
  const char* failedSyscall = "";
  const int err = DescribeOpenFile(fd, &geometry, &failedSyscall);
  close(fd);
  if (err != 0) throw ErrnoError(env, err, failedSyscall, path);
  return GeometryToObject(env, geometry);
}

// Creates a new file and allocates all its blocks; any failure removes the file again, so a
// caller never finds a sparse or half-allocated file it might hand to the kernel.
class AllocateFileWorker : public SyscallWorker {
 public:
  AllocateFileWorker(Napi::Env env, std::string path, uint64_t size)
      : SyscallWorker(env, "coriolis:allocateFile", std::move(path)), size_(size) {}

 private:
  void Execute() override {
    const int fd = RetryOnEintr([&] {
      return open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    });
    if (fd < 0) return Fail(errno, "open");
    if (RetryOnEintr([&] { return fallocate(fd, 0, 0, static_cast<off_t>(size_)); }) != 0) {
      Fail(errno, "fallocate");
    } else if (fsync(fd) != 0) {
      Fail(errno, "fsync");
    }
    if (close(fd) != 0) Fail(errno, "close");
    if (Failed()) unlink(path_.c_str());
  }

  Napi::Value Result(Napi::Env env) override { return env.Undefined(); }

  const uint64_t size_;
};

Napi::Value AllocateFile(const Napi::CallbackInfo& info) {
  const std::string path = ToPath(info, 0);
  const uint64_t size = ToSafeUint64(info[1], "size");
  auto* worker = new AllocateFileWorker(info.Env(), path, size);
  worker->Queue();
  return worker->Promise();
}

// Deallocates [offset, offset + length) of a regular file, which then reads as zeros; its size
// does not change. EOPNOTSUPP where the filesystem cannot.
Napi::Value PunchHole(const Napi::CallbackInfo& info) {
  const std::string path = ToPath(info, 0);
  const uint64_t offset = ToSafeUint64(info[1], "offset");
  const uint64_t length = ToSafeUint64(info[2], "length");
  return QueueSyscall(
      info.Env(), "fallocate", path,
      [path, offset, length] {
        const int fd = RetryOnEintr([&] { return open(path.c_str(), O_WRONLY | O_CLOEXEC); });
        if (fd < 0) return errno;
        int err = 0;
        if (RetryOnEintr([&] {
              return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset), static_cast<off_t>(length));
            }) != 0) {
          err = errno;
        }
        close(fd);
        return err;
      },
      [](Napi::Env env) { return env.Undefined(); });
}

// Raw FIEMAP extents; TypeScript decides which flags are acceptable and merges ranges.
class FileExtentsWorker : public SyscallWorker {
 public:
  FileExtentsWorker(Napi::Env env, std::string path)
      : SyscallWorker(env, "coriolis:fileExtents", std::move(path)) {}

 private:
  static constexpr uint32_t kExtentsPerCall = 512;

  void Execute() override {
    const int fd = RetryOnEintr([&] { return open(path_.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK); });
    if (fd < 0) return Fail(errno, "open");
    struct stat st = {};
    if (fstat(fd, &st) != 0) {
      Fail(errno, "fstat");
    } else if (S_ISDIR(st.st_mode)) {
      // FIEMAP would map the directory's own blocks.
      Fail(EISDIR, "fstat");
    } else {
      major_ = major(st.st_dev);
      minor_ = minor(st.st_dev);
      MapExtents(fd);
    }
    close(fd);
  }

  void MapExtents(int fd) {
    std::vector<uint8_t> request(sizeof(struct fiemap) + kExtentsPerCall * sizeof(struct fiemap_extent));
    auto* map = reinterpret_cast<struct fiemap*>(request.data());
    uint64_t start = 0;
    // Sync once, so delayed allocations get their blocks; later calls continue the same map.
    uint32_t flags = FIEMAP_FLAG_SYNC;
    for (;;) {
      std::fill(request.begin(), request.end(), 0);
      map->fm_start = start;
      map->fm_length = FIEMAP_MAX_OFFSET - start;
      map->fm_flags = flags;
      map->fm_extent_count = kExtentsPerCall;
      if (ioctl(fd, FS_IOC_FIEMAP, map) != 0) return Fail(errno, "ioctl(FS_IOC_FIEMAP)");
      flags = 0;
      if (map->fm_mapped_extents == 0) return;
      for (uint32_t i = 0; i < map->fm_mapped_extents; i++) extents_.push_back(map->fm_extents[i]);
      const struct fiemap_extent& last = map->fm_extents[map->fm_mapped_extents - 1];
      if ((last.fe_flags & FIEMAP_EXTENT_LAST) != 0) return;
      start = last.fe_logical + last.fe_length;
    }
  }

  Napi::Value Result(Napi::Env env) override {
    Napi::Object result = Napi::Object::New(env);
    Napi::Object device = Napi::Object::New(env);
    device.Set("major", major_);
    device.Set("minor", minor_);
    result.Set("device", device);
    Napi::Array extents = Napi::Array::New(env, extents_.size());
    for (size_t i = 0; i < extents_.size(); i++) {
      Napi::Object extent = Napi::Object::New(env);
      extent.Set("logical", static_cast<double>(extents_[i].fe_logical));
      extent.Set("physical", static_cast<double>(extents_[i].fe_physical));
      extent.Set("length", static_cast<double>(extents_[i].fe_length));
      extent.Set("flags", extents_[i].fe_flags);
      extents.Set(i, extent);
    }
    result.Set("extents", extents);
    return result;
  }

  uint32_t major_ = 0;
  uint32_t minor_ = 0;
  std::vector<struct fiemap_extent> extents_;
};

Napi::Value FileExtents(const Napi::CallbackInfo& info) {
  auto* worker = new FileExtentsWorker(info.Env(), ToPath(info, 0));
  worker->Queue();
  return worker->Promise();
}

Napi::Value FsStats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string path = ToPath(info, 0);
  struct statvfs st = {};
  if (statvfs(path.c_str(), &st) != 0) throw ErrnoError(env, errno, "statvfs", path);
  Napi::Object result = Napi::Object::New(env);
  result.Set("totalBytes", static_cast<double>(st.f_blocks) * st.f_frsize);
  result.Set("freeBytes", static_cast<double>(st.f_bfree) * st.f_frsize);
  result.Set("availableBytes", static_cast<double>(st.f_bavail) * st.f_frsize);
  return result;
}

Napi::Object FiemapFlags(Napi::Env env) {
  Napi::Object flags = Napi::Object::New(env);
  flags.Set("LAST", FIEMAP_EXTENT_LAST);
  flags.Set("UNKNOWN", FIEMAP_EXTENT_UNKNOWN);
  flags.Set("DELALLOC", FIEMAP_EXTENT_DELALLOC);
  flags.Set("ENCODED", FIEMAP_EXTENT_ENCODED);
  flags.Set("DATA_ENCRYPTED", FIEMAP_EXTENT_DATA_ENCRYPTED);
  flags.Set("NOT_ALIGNED", FIEMAP_EXTENT_NOT_ALIGNED);
  flags.Set("DATA_INLINE", FIEMAP_EXTENT_DATA_INLINE);
  flags.Set("DATA_TAIL", FIEMAP_EXTENT_DATA_TAIL);
  flags.Set("UNWRITTEN", FIEMAP_EXTENT_UNWRITTEN);
  flags.Set("MERGED", FIEMAP_EXTENT_MERGED);
  flags.Set("SHARED", FIEMAP_EXTENT_SHARED);
  return flags;
}

}  // namespace

void InitBlockdev(Napi::Env env, Napi::Object exports) {
  exports.Set("queryBlockDevice", Napi::Function::New(env, QueryBlockDevice, "queryBlockDevice"));
  exports.Set("allocateFile", Napi::Function::New(env, AllocateFile, "allocateFile"));
  exports.Set("punchHole", Napi::Function::New(env, PunchHole, "punchHole"));
  exports.Set("fileExtents", Napi::Function::New(env, FileExtents, "fileExtents"));
  exports.Set("fsStats", Napi::Function::New(env, FsStats, "fsStats"));
  exports.Set("fiemapFlags", FiemapFlags(env));
}

}  // namespace coriolis
