// Space for snapstores: chunk files allocated whole (never sparse) under a snapstore location,
// and where their bytes are on the location's block device: the byte ranges the kernel writes
// copy-on-write data to.
import { sameDevice, showDevice, type ByteRange, type DeviceId } from '../core/devices';
import { errorCode } from '../core/errors';
import { faultPoint } from '../core/faults';
import { allocateFile, fileExtents } from '../native/blockdev';

/** Chunks are whole MiB: whole copy-on-write blocks and whole sectors. */
export const roundToMiB = (bytes: number): number => Math.ceil(bytes / 2 ** 20) * 2 ** 20;

/** The location has no room left (for this user or at all). */
export const isLocationFull = (err: unknown): boolean => errorCode(err) === 'ENOSPC' || errorCode(err) === 'EDQUOT';

/**
 * Creates `file` with `size` bytes allocated and returns where they are on `device`. Refuses a
 * file whose bytes are on another device: the kernel would write to the wrong disk.
 */
export async function allocateChunk(file: string, size: number, device: DeviceId): Promise<ByteRange[]> {
  await allocateFile(file, size);
  faultPoint('space:allocated');
  const extents = await fileExtents(file);
  if (!sameDevice(extents.device, device)) {
    throw new Error(`${file} is on ${showDevice(extents.device)}, not on the location's device ${showDevice(device)}`);
  }
  return extents.ranges;
}
