// An in-memory export source for the NBD tests: each export is a file read with the real
// O_DIRECT reader, with a CBT map the test chooses. Tests remove and fail exports at will, and
// can wrap readers to delay or break reads.
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import type { ImageReader, RangeSummary } from '../../../src/core/image';
import type { Export, ExportEvents, ExportSource } from '../../../src/exports/types';
import { queryBlockDevice } from '../../../src/native/blockdev';
import { DirectReader } from '../../../src/native/reader';
import { AgentError } from '../../../src/core/errors';
import { ZeroExtents } from '../../../src/exports/zeros';

export interface FakeExportSpec {
  name: string;
  file: string;
  description?: string;
  cbt?: Export['cbt'];
}

/** What the kernel answers reads of a corrupt image with. */
function eio(message: string): Error {
  return Object.assign(new Error(`EIO: ${message}`), { code: 'EIO', errno: -5 });
}

/** What the real registry answers an open of a failed export with (exports/types.ts). */
function failedExport(message: string): AgentError {
  return new AgentError('conflict', message, { code: 'EIO' });
}

/** A reader that fails with EIO once its export has failed, as the engine's do, and reports its closing. */
class RegistryReader implements ImageReader {
  constructor(private readonly inner: ImageReader, private readonly isFailed: () => boolean,
    private readonly onClose: () => void) {}
  get path(): string { return this.inner.path; }
  get size(): number { return this.inner.size; }
  get logicalBlockSize(): number { return this.inner.logicalBlockSize; }
  async read(offset: number, length: number): Promise<Buffer> {
    if (this.isFailed()) throw eio(`the snapshot of ${this.path} failed`);
    return this.inner.read(offset, length);
  }
  async digest(offset: number, length: number): Promise<RangeSummary> {
    if (this.isFailed()) throw eio(`the snapshot of ${this.path} failed`);
    return this.inner.digest(offset, length);
  }
  async close(): Promise<void> {
    await this.inner.close();
    this.onClose();
  }
}

export class FakeExportRegistry extends EventEmitter<ExportEvents> implements ExportSource {
  private readonly exports = new Map<string, Export & { file: string }>();
  /** Readers handed out and not yet closed. */
  openReaders = 0;
  /** Every read the readers were asked for, in order. */
  readonly reads: Array<{ name: string; offset: number; length: number }> = [];
  /** Wraps each reader as it is opened: delays, failures. */
  wrapReader: ((reader: ImageReader, name: string) => ImageReader) | null = null;

  add(spec: FakeExportSpec): Export {
    // st_size of a block device is 0: ask the device.
    const sizeBytes = queryBlockDevice(spec.file).size;
    const exported: Export & { file: string } = {
      name: spec.name,
      snapshotId: spec.name.split('/')[0] ?? spec.name,
      trackedDiskId: spec.name.split('/')[1] ?? '',
      httpPath: `/api/v1/snapshots/${spec.name}/consume`,
      description: spec.description ?? `snapshot image ${spec.name}`,
      sizeBytes,
      cbt: spec.cbt ?? { generationId: 'gen-1', snapshotNumber: 1, blockSize: 65536, map: Buffer.alloc(Math.ceil(sizeBytes / 65536)) },
      failure: null,
      knownZeros: new ZeroExtents(),
      file: spec.file,
    };
    this.exports.set(spec.name, exported);
    return exported;
  }

  remove(name: string): void {
    this.exports.delete(name);
    this.emit('removed', name);
  }

  fail(name: string, reason: string): void {
    const exported = this.exports.get(name);
    if (exported === undefined) throw new Error(`no export ${name}`);
    exported.failure = reason;
    this.emit('failed', name, reason);
  }

  list(): Export[] {
    return [...this.exports.values()];
  }

  get(name: string): Export | undefined {
    return this.exports.get(name);
  }

  async open(name: string): Promise<ImageReader> {
    const exported = this.exports.get(name);
    if (exported === undefined) throw Object.assign(new Error(`no export ${name}`), { code: 'ENOENT' });
    if (exported.failure !== null) throw failedExport(`the snapshot of ${name} failed: ${exported.failure}`);
    const direct = await DirectReader.open(exported.file);
    const tracked: ImageReader = {
      path: direct.path,
      size: direct.size,
      logicalBlockSize: direct.logicalBlockSize,
      read: (offset, length) => {
        this.reads.push({ name, offset, length });
        return direct.read(offset, length);
      },
      digest: (offset, length) => direct.digest(offset, length),
      close: () => direct.close(),
    };
    this.openReaders++;
    const reader = new RegistryReader(tracked, () => exported.failure !== null, () => { this.openReaders--; });
    return this.wrapReader === null ? reader : this.wrapReader(reader, name);
  }
}

/** A reader whose reads of chosen offsets wait for the test to let them go. */
export class GatedReader implements ImageReader {
  private readonly gates = new Map<number, { opened: Promise<void>; open: () => void }>();
  /** Offsets of the reads asked for, held or not. */
  readonly requested: number[] = [];
  constructor(private readonly inner: ImageReader) {}
  get path(): string { return this.inner.path; }
  get size(): number { return this.inner.size; }
  get logicalBlockSize(): number { return this.inner.logicalBlockSize; }

  /** Reads starting at `offset` wait until release(offset). */
  hold(offset: number): void {
    let open!: () => void;
    const opened = new Promise<void>((resolve) => { open = resolve; });
    this.gates.set(offset, { opened, open });
  }

  release(offset: number): void {
    this.gates.get(offset)?.open();
  }

  async read(offset: number, length: number): Promise<Buffer> {
    this.requested.push(offset);
    await this.gates.get(offset)?.opened;
    return this.inner.read(offset, length);
  }

  digest(offset: number, length: number): Promise<RangeSummary> { return this.inner.digest(offset, length); }

  close(): Promise<void> { return this.inner.close(); }
}

/** A file of `size` bytes whose every 8-byte word encodes its own offset (and a seed), so misplaced data shows. */
export function writePatternImage(file: string, size: number, seed = 1): Buffer {
  const data = Buffer.alloc(size);
  for (let at = 0; at + 8 <= size; at += 8) {
    data.writeUInt32LE((at / 8) >>> 0, at);
    data.writeUInt32LE((seed * 2654435761 + at) >>> 0, at + 4);
  }
  fs.writeFileSync(file, data);
  return data;
}
