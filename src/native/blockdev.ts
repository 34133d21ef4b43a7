// Typed facade over the addon's block-device and filesystem queries.
import type { ByteRange, DeviceId } from '../core/devices';
import { binding, isSystemError } from './binding';
import { checkByteCount, checkPath } from './validate';

export interface BlockDeviceInfo extends DeviceId {
  /**
   * 'block': size from BLKGETSIZE64, block sizes from BLKSSZGET/BLKPBSZGET, major:minor of the
   * device itself. 'file': st_size; logicalBlockSize is the filesystem's O_DIRECT offset alignment
   * (STATX_DIOALIGN; st_blksize on kernels that do not report it), physicalBlockSize st_blksize,
   * and major:minor those of the device holding the filesystem (st_dev).
   */
  kind: 'block' | 'file';
  size: number;
  logicalBlockSize: number;
  physicalBlockSize: number;
}

/** Rejects with code ENOENT, EISDIR, ENOTBLK (neither a file nor a block device), EACCES… */
export function queryBlockDevice(path: string): BlockDeviceInfo {
  checkPath(path);
  return binding.queryBlockDevice(path) as BlockDeviceInfo;
}

/**
 * Creates a new file (mode 0600; EEXIST if the path exists) with all `size` bytes allocated by
 * fallocate: never sparse. On any failure, EOPNOTSUPP and ENOSPC included, the file is removed.
 */
export async function allocateFile(path: string, size: number): Promise<void> {
  checkPath(path);
  checkByteCount(size, 'size');
  if (size === 0) throw new RangeError('size must be at least 1 byte');
  try {
    await binding.allocateFile(path, size);
  } catch (err) {
    if (isSystemError(err, 'EOPNOTSUPP')) {
      err.message += ': the filesystem cannot preallocate blocks, and a sparse file is refused';
    }
    throw err;
  }
}

/**
 * Deallocates `length` bytes of a regular file from `offset` (fallocate PUNCH_HOLE, size kept):
 * they read as zeros and take no space. Rejects with EOPNOTSUPP where the filesystem cannot.
 */
export async function punchHole(path: string, offset: number, length: number): Promise<void> {
  checkPath(path);
  checkByteCount(offset, 'offset');
  checkByteCount(length, 'length');
  if (length === 0) return;
  await binding.punchHole(path, offset, length);
}

export interface FileExtents {
  /** The block device that the ranges are offsets on: the one holding the file's filesystem. */
  device: DeviceId;
  /** In file order; neighbours contiguous both in the file and on the device are merged. */
  ranges: ByteRange[];
}

const { fiemapFlags } = binding;

// Extents whose bytes do not sit plainly at fe_physical on the device.
const UNMAPPABLE_FLAGS = ['UNKNOWN', 'DELALLOC', 'ENCODED', 'DATA_ENCRYPTED', 'NOT_ALIGNED', 'DATA_INLINE', 'DATA_TAIL'];

/**
 * Where a file's bytes are on the block device beneath it (FIEMAP after syncing the file).
 * Unwritten (preallocated) extents are included. Rejects when an extent has no plain device
 * location (code EOPNOTSUPP) and when the filesystem has no block device of its own
 * (code ENOTBLK: btrfs, overlayfs… whose FIEMAP addresses are not device offsets).
 */
export async function fileExtents(path: string): Promise<FileExtents> {
  checkPath(path);
  const mapped = await binding.fileExtents(path);
  const { major, minor } = mapped.device;
  if (major === 0) {
    throw Object.assign(
      new Error(`${path} is on an anonymous device ${major}:${minor}: its extents are not offsets on a block device`),
      { code: 'ENOTBLK' },
    );
  }
  const ranges: ByteRange[] = [];
  let fileEnd = 0;
  for (const extent of mapped.extents) {
    const unmappable = UNMAPPABLE_FLAGS.filter((name) => (extent.flags & fiemapFlags[name]) !== 0);
    if (unmappable.length > 0) {
      throw Object.assign(
        new Error(`extent at byte ${extent.logical} of ${path} is ${unmappable.join('|')}: it has no plain location on the device`),
        { code: 'EOPNOTSUPP' },
      );
    }
    const previous = ranges[ranges.length - 1];
    if (previous !== undefined && fileEnd === extent.logical && previous.offset + previous.length === extent.physical) {
      previous.length += extent.length;
    } else {
      ranges.push({ offset: extent.physical, length: extent.length });
    }
    fileEnd = extent.logical + extent.length;
  }
  return { device: { major, minor }, ranges };
}

/** Where `length` bytes of a file from `logical` are on its device; physical is null when unknown. */
export interface FileExtent {
  logical: number;
  physical: number | null;
  length: number;
}

/**
 * A file's data extents in file order, as FIEMAP reports them: holes are the gaps. Two files
 * whose extents at the same offset share a physical address share those bytes (a reflink).
 */
export async function fileLayout(path: string): Promise<FileExtent[]> {
  checkPath(path);
  const mapped = await binding.fileExtents(path);
  return mapped.extents.map(({ logical, physical, length, flags }) => ({
    logical,
    physical: UNMAPPABLE_FLAGS.some((name) => (flags & fiemapFlags[name]) !== 0) ? null : physical,
    length,
  }));
}

export interface FsStats {
  totalBytes: number;
  freeBytes: number;
  /** What an unprivileged user may still allocate (f_bavail). */
  availableBytes: number;
}

/** statvfs of the filesystem holding `path`. */
export function fsStats(path: string): FsStats {
  checkPath(path);
  return binding.fsStats(path) as FsStats;
}
