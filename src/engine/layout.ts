// Which parts of two files can differ, from their extent maps alone: where both are holes, or
// both point at the same physical bytes (a reflink that nobody has written since), the
// content is the same without reading it.
import type { FileExtent } from '../native/blockdev';

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
    const [start, end] = [points[i]!, points[i + 1]!];
    while (ia < a.length && a[ia]!.logical + a[ia]!.length <= start) ia++;
    while (ib < b.length && b[ib]!.logical + b[ib]!.length <= start) ib++;
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
