// The local copy: a regular file (sparse: zero ranges are holes, punched where a later copy
// zeroes data) or a block device (which has no holes: zeros are written). Writes are positional; sync() makes
// them durable before the state file may say they are done.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import { AgentError, errorCode } from '../core/errors';
import { isAllZero } from '../exports/zeros';
import { punchHole, queryBlockDevice } from '../native/blockdev';

const ZERO_CHUNK = Buffer.alloc(1024 * 1024);

export type TargetKind = 'file' | 'device';

/** What lies at `path` now: nothing, a regular file of some size, or a block device. */
export function inspectTarget(path: string): { kind: TargetKind; size: number } | null {
  let stat: fs.Stats;
  try {
    stat = fs.statSync(path);
  } catch (err) {
    if ((err as { code?: string }).code === 'ENOENT') return null;
    throw new AgentError('invalid', `--out ${path}: ${(err as Error).message}`, { cause: err });
  }
  if (stat.isFile()) return { kind: 'file', size: stat.size };
  if (stat.isBlockDevice()) return { kind: 'device', size: queryBlockDevice(path).size };
  throw new AgentError('invalid', `--out ${path} is neither a regular file nor a block device`);
}

export class Target {
  private constructor(readonly path: string, readonly kind: TargetKind, private readonly handle: fsp.FileHandle) {}

  /**
   * Opens the copy for an image of `size` bytes. `fresh`: a regular file is emptied first, so
   * every byte not written stays a hole. A regular file of another size is cut or extended to
   * `size`; a block device must hold at least `size` bytes.
   */
  static async open(path: string, size: number, fresh: boolean): Promise<Target> {
    const found = inspectTarget(path);
    if (found?.kind === 'device') {
      if (found.size < size) throw new AgentError('invalid', `--out ${path} holds ${found.size} bytes, the image ${size}`);
      return new Target(path, 'device', await fsp.open(path, 'r+'));
    }
    const handle = await fsp.open(path, found === null ? 'w+' : 'r+', 0o600);
    try {
      if (fresh) await handle.truncate(0);
      if (fresh || found === null || found.size !== size) await handle.truncate(size);
    } catch (err) {
      await handle.close();
      throw err;
    }
    return new Target(path, 'file', handle);
  }

  async write(offset: number, bytes: Buffer): Promise<void> {
    for (let done = 0; done < bytes.length;) {
      const { bytesWritten } = await this.handle.write(bytes, done, bytes.length - done, offset + done);
      done += bytesWritten;
    }
  }

  /**
   * Makes [offset, offset + length) read as zeros. On a regular file that is a hole (or zeros
   * written where the filesystem cannot punch one); on a block device zeros are written.
   */
  async zero(offset: number, length: number): Promise<void> {
    if (this.kind === 'file') {
      try {
        await punchHole(this.path, offset, length);
        return;
      } catch (err) {
        if (errorCode(err) !== 'EOPNOTSUPP') throw err;
      }
    }
    for (let at = offset; at < offset + length; at += ZERO_CHUNK.length) {
      const size = Math.min(ZERO_CHUNK.length, offset + length - at);
      if (this.kind === 'file' && isAllZero(await this.read(at, size))) continue;
      await this.write(at, ZERO_CHUNK.subarray(0, size));
    }
  }

  async read(offset: number, length: number): Promise<Buffer> {
    const buffer = Buffer.allocUnsafe(length);
    let done = 0;
    while (done < length) {
      const { bytesRead } = await this.handle.read(buffer, done, length - done, offset + done);
      if (bytesRead === 0) break;
      done += bytesRead;
    }
    // Past the end of a short file: zeros, as the agent's image would not be.
    buffer.fill(0, done);
    return buffer;
  }

  async sync(): Promise<void> {
    await this.handle.datasync();
  }

  async close(): Promise<void> {
    await this.handle.close();
  }
}
