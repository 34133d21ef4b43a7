// How the model sees writes: by comparing files. Which parts of two files can differ comes from
// their extent maps alone (where both are holes, or both point at the same physical bytes, a
// reflink nobody has written since, the content is the same without reading it); only the
// rest is read and compared, block by block.
import fsp from 'node:fs/promises';
import { fileLayout, type FileExtent } from '../../native/blockdev';

const COMPARE_CHUNK = 4 * 1024 * 1024;

/** [start, end) spans of [0, size) where `a` and `b` may differ; sorted and disjoint. */
export function spansThatMayDiffer(a: readonly FileExtent[], b: readonly FileExtent[], size: number): Array<[number, number]> {
  const boundaries = new Set<number>([0, size]);
  for (const extent of [...a, ...b]) {
    if (extent.logical < size) boundaries.add(extent.logical);
    if (extent.logical + extent.length < size) boundaries.add(extent.logical + extent.length);
  }
  const points = [...boundaries].sort((x, y) => x - y);
  const spans: Array<[number, number]> = [];
  let ia = 0;
  let ib = 0;
  for (let i = 0; i + 1 < points.length; i++) {
    const [start, end] = [points[i], points[i + 1]];
    while (ia < a.length && a[ia].logical + a[ia].length <= start) ia++;
    while (ib < b.length && b[ib].logical + b[ib].length <= start) ib++;
    // Within [start, end) each file is either a hole or one extent: no boundary lies inside.
    const where = (extents: readonly FileExtent[], index: number): number | 'hole' | 'unknown' => {
      const extent = extents[index];
      if (extent === undefined || extent.logical > start) return 'hole';
      return extent.physical === null ? 'unknown' : extent.physical + (start - extent.logical);
    };
    const [inA, inB] = [where(a, ia), where(b, ib)];
    if (inA === inB && inA !== 'unknown') continue;
    const last = spans[spans.length - 1];
    if (last !== undefined && last[1] === start) last[1] = end;
    else spans.push([start, end]);
  }
  return spans;
}

/** The spans of two files that need reading to compare them: all of it when a map is unavailable. */
async function spansToCompare(a: string, b: string, size: number): Promise<Array<[number, number]>> {
  try {
    return spansThatMayDiffer(await fileLayout(a), await fileLayout(b), size);
  } catch {
    // A block device or a filesystem without FIEMAP: read everything.
    return [[0, size]];
  }
}

/**
 * Calls `visit(index)` for every `blockSize` block whose content differs between the two
 * files. Only spans their extent maps do not prove equal are read, so holes and reflinked
 * extents cost nothing.
 */
export async function forEachDifferentBlock(a: string, b: string, size: number, blockSize: number,
  visit: (index: number) => void): Promise<void> {
  const spans = await spansToCompare(a, b, size);
  const fa = await fsp.open(a, 'r');
  const fb = await fsp.open(b, 'r').catch(async (err: unknown) => {
    await fa.close();
    throw err;
  });
  try {
    const chunk = Math.max(blockSize, COMPARE_CHUNK - (COMPARE_CHUNK % blockSize));
    const bufA = Buffer.allocUnsafe(chunk);
    const bufB = Buffer.allocUnsafe(chunk);
    let compared = 0; // blocks before this offset are done
    for (const [spanStart, spanEnd] of spans) {
      const first = Math.max(compared, Math.floor(spanStart / blockSize) * blockSize);
      const last = Math.min(size, Math.ceil(spanEnd / blockSize) * blockSize);
      for (let offset = first; offset < last; offset += chunk) {
        const length = Math.min(chunk, last - offset);
        const [ra, rb] = await Promise.all([fa.read(bufA, 0, length, offset), fb.read(bufB, 0, length, offset)]);
        // Past the end of a shorter file reads as zeros, as a grown disk's new space does.
        bufA.fill(0, ra.bytesRead, length);
        bufB.fill(0, rb.bytesRead, length);
        for (let start = 0; start < length; start += blockSize) {
          const end = Math.min(start + blockSize, length);
          if (bufA.compare(bufB, start, end, start, end) !== 0) visit((offset + start) / blockSize);
        }
      }
      compared = Math.max(compared, last);
    }
  } finally {
    await Promise.all([fa.close(), fb.close()]);
  }
}
