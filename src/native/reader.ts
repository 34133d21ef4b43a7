// Typed facade over the addon's direct reader: O_DIRECT reads of any byte range of a block
// device or regular file, answered with buffers that point into pooled aligned memory.
import type { RangeSummary } from '../core/image';
import { binding, type NativeReaderHandle } from './binding';
import type { BlockDeviceInfo } from './blockdev';
import { IO_PRIORITIES, type IoPriority } from './io-priority';
import { checkByteCount, checkPath } from './validate';

/** Longest single read; longer ones reject before reaching the addon. */
export const MAX_READ_LENGTH = 64 * 1024 * 1024;


export class DirectReader {
  private closing: Promise<void> | undefined;

  private constructor(
    private readonly handle: NativeReaderHandle,
    readonly path: string,
    private readonly geometry: BlockDeviceInfo,
  ) {}

  /** Opens `path` read-only with O_DIRECT; rejects with code ENOENT, EISDIR, ENOTBLK, EINVAL… */
  static async open(path: string): Promise<DirectReader> {
    checkPath(path);
    const handle = new binding.DirectReaderHandle(path);
    // Its shape is the one queryBlockDevice reports (blockdev.cc).
    const geometry = await handle.open() as BlockDeviceInfo;
    // A device's tail shorter than a logical block cannot be read with O_DIRECT (a loop device
    // over a file whose size is not a multiple of its sector size has one): it is not offered.
    if (geometry.kind === 'block') {
      geometry.size -= geometry.size % geometry.logicalBlockSize;
    }
    return new DirectReader(handle, path, geometry);
  }

  get kind(): 'block' | 'file' { return this.geometry.kind; }
  get size(): number { return this.geometry.size; }
  /** The O_DIRECT offset alignment: BLKSSZGET for a device, STATX_DIOALIGN (else st_blksize) for a file. */
  get logicalBlockSize(): number { return this.geometry.logicalBlockSize; }
  get physicalBlockSize(): number { return this.geometry.physicalBlockSize; }

  /**
   * Exactly `length` bytes from `offset`. The buffer points into pooled memory that returns to
   * the pool when the buffer is garbage collected. Rejects with code ERANGE past the end and
   * ESHUTDOWN once close() was called.
   */
  read(offset: number, length: number): Promise<Buffer> {
    try {
      this.checkRange(offset, length);
    } catch (err) {
      return Promise.reject(err);
    }
    return this.handle.read(offset, length);
  }

  /**
   * What `length` bytes from `offset` hold, worked out on the reader's threads: all zeros, or
   * their SHA-256. The bytes never reach JavaScript. Rejects as read() does.
   */
  digest(offset: number, length: number): Promise<RangeSummary> {
    try {
      this.checkRange(offset, length);
      if (length === 0) throw new RangeError('digest of an empty range');
    } catch (err) {
      return Promise.reject(err);
    }
    // Its shape is the one reader.cc builds.
    return this.handle.digest(offset, length) as Promise<RangeSummary>;
  }

  private checkRange(offset: number, length: number): void {
    checkByteCount(offset, 'offset');
    checkByteCount(length, 'length');
    if (length > MAX_READ_LENGTH) {
      throw new RangeError(`length ${length} exceeds the maximum single read of ${MAX_READ_LENGTH} bytes`);
    }
    if (offset + length > this.size) {
      throw Object.assign(
        new RangeError(`read of [${offset}, ${offset + length}) is past the end of ${this.path} (size ${this.size})`),
        { code: 'ERANGE' },
      );
    }
  }

  /** Waits for the reads in flight, then closes the descriptor. Later calls share the result. */
  close(): Promise<void> {
    const closing = this.closing ?? this.handle.close();
    this.closing = closing;
    return closing;
  }
}

/**
 * Returns the memory behind a buffer from DirectReader.read() to the pool now rather than when
 * the buffer is garbage collected, which lets long downloads run without full collections. The
 * buffer, and every view of its memory, becomes empty: call it only once nothing will read the
 * bytes, e.g. from a socket write's callback. False (and nothing changes) for any other buffer.
 */
export function recycleReadBuffer(buffer: Buffer): boolean {
  return binding.recycleReadBuffer(buffer);
}

export interface ReaderPoolStats {
  /** Chunks held by live buffers (a chunk may be larger than the bytes its buffer shows). */
  buffersInUse: number;
  bytesInUse: number;
  /** Chunks kept for reuse. */
  buffersPooled: number;
  bytesPooled: number;
}

export function readerPoolStats(): ReaderPoolStats {
  return binding.readerPoolStats() as ReaderPoolStats;
}

export interface ReaderPoolOptions {
  /** Threads that run the preads; 8 unless set. */
  ioThreads?: number;
  /** Memory kept for reuse once buffers are collected, 128 MiB unless set; beyond it the chunks released longest ago are freed. */
  maxPooledBytes?: number;
  /** The I/O priority of every reader thread, now and later; unless set, the threads keep the process's. */
  ioPriority?: IoPriority;
}

/** ioprio_set(2) class and level of each name; the class numbers come from the addon. */
function ioPriorityValue(priority: IoPriority): { ioClass: number; level: number } {
  const classes = binding.ioPriorityClasses;
  switch (priority) {
    case 'normal': return { ioClass: classes.none, level: 0 };
    case 'best-effort-low': return { ioClass: classes.bestEffort, level: classes.lowestLevel };
    case 'idle': return { ioClass: classes.idle, level: 0 };
  }
}

export function configureReaderPool(options: ReaderPoolOptions): void {
  if (options.ioThreads !== undefined) {
    checkByteCount(options.ioThreads, 'ioThreads');
    if (options.ioThreads < 1 || options.ioThreads > 256) throw new RangeError('ioThreads must be between 1 and 256');
  }
  if (options.maxPooledBytes !== undefined) checkByteCount(options.maxPooledBytes, 'maxPooledBytes');
  if (options.ioPriority !== undefined && !IO_PRIORITIES.includes(options.ioPriority)) {
    throw new RangeError(`ioPriority must be one of ${IO_PRIORITIES.join(', ')}, got ${JSON.stringify(options.ioPriority)}`);
  }
  if (options.ioThreads !== undefined) binding.setReaderIoThreads(options.ioThreads);
  if (options.maxPooledBytes !== undefined) binding.setReaderMaxPooledBytes(options.maxPooledBytes);
  if (options.ioPriority !== undefined) {
    const { ioClass, level } = ioPriorityValue(options.ioPriority);
    // Throws a SystemError (syscall ioprio_set) when the kernel refuses it.
    binding.setReaderIoPriority(ioClass, level);
  }
}

/** Kernel thread ids of the reader threads (see them with `ionice -p TID`). */
export function readerThreadIds(): number[] {
  return binding.readerThreadIds();
}
