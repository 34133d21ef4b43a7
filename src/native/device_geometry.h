// What the reader and the block-device queries need to know about an open file or device.
#pragma once
#include <napi.h>

#include <cstdint>

namespace coriolis {

struct DeviceGeometry {
  bool isBlockDevice = false;
  uint64_t size = 0;
  // Alignment that O_DIRECT offsets and lengths need.
  uint32_t logicalBlockSize = 0;
  uint32_t physicalBlockSize = 0;
  // The device itself for a block device; the device holding the filesystem for a regular file.
  uint32_t major = 0;
  uint32_t minor = 0;
};

// Describes an open block device or regular file. Returns 0, or an errno value and the failing
// syscall; EISDIR for a directory and ENOTBLK for anything else that is neither.
int DescribeOpenFile(int fd, DeviceGeometry* geometry, const char** failedSyscall);

// {kind: 'block'|'file', size, logicalBlockSize, physicalBlockSize, major, minor}
Napi::Object GeometryToObject(Napi::Env env, const DeviceGeometry& geometry);

}  // namespace coriolis
