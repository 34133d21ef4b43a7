// Reads of a snapshot image: what the engines hand out and what both doors serve from.

/** Reads of one snapshot image. Fails with EIO once the snapshot is corrupt, as the kernel does. */
export interface ImageReader {
  readonly path: string;
  readonly size: number;
  readonly logicalBlockSize: number;
  read(offset: number, length: number): Promise<Buffer>;
  close(): Promise<void>;
}
