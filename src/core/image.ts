// Reads of a snapshot image: what the engines hand out and what both doors serve from.

/** Reads of one snapshot image. Fails with EIO once the snapshot is corrupt, as the kernel does. */
export interface ImageReader {
  readonly path: string;
  readonly size: number;
  readonly logicalBlockSize: number;
  read(offset: number, length: number): Promise<Buffer>;
  close(): Promise<void>;
}

/** `reader` with its reads made by `read`, which usually calls the reader's own: the way a door or an engine adds its rules to reads. */
export function withReads(reader: ImageReader, read: ImageReader['read']): ImageReader {
  return {
    get path() { return reader.path; },
    get size() { return reader.size; },
    get logicalBlockSize() { return reader.logicalBlockSize; },
    read,
    close: () => reader.close(),
  };
}
