// Reads of a snapshot image: what the engines hand out and what both doors serve from.

/** What a range of an image holds, as digest() works it out without handing the bytes over. */
export interface RangeSummary {
  zero: boolean;
  /** SHA-256 of the bytes; null for an all-zero range (whose digest depends only on its length). */
  sha256: Buffer | null;
}

/** Reads of one snapshot image. Fails with EIO once the snapshot is corrupt, as the kernel does. */
export interface ImageReader {
  readonly path: string;
  readonly size: number;
  readonly logicalBlockSize: number;
  read(offset: number, length: number): Promise<Buffer>;
  /** The range summarised off the event loop (the native reader's threads); fails as read() does. */
  digest(offset: number, length: number): Promise<RangeSummary>;
  close(): Promise<void>;
}

/**
 * Runs around each read and digest of a reader: checks before, the call itself (`use`), checks
 * or error mapping after. The way a door or an engine adds its rules to an image's reads.
 */
export type ReadGuard = <T>(offset: number, length: number, use: () => Promise<T>) => Promise<T>;

/** `reader` with `guard` around every read and digest. */
export function guardReads(reader: ImageReader, guard: ReadGuard): ImageReader {
  return {
    get path() { return reader.path; },
    get size() { return reader.size; },
    get logicalBlockSize() { return reader.logicalBlockSize; },
    read: (offset, length) => guard(offset, length, () => reader.read(offset, length)),
    digest: (offset, length) => guard(offset, length, () => reader.digest(offset, length)),
    close: () => reader.close(),
  };
}
