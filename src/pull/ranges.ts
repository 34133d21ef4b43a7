// Byte ranges as the pull plans them: sorted, merged lists of [start, end) pairs, and the split
// of a plan into the pieces one request fetches.

/** Half-open [start, end), in bytes. */
export type Span = readonly [number, number];

/** `spans` sorted and with touching or overlapping ones merged. */
export function mergeSpans(spans: readonly Span[]): Span[] {
  const sorted = [...spans].filter(([start, end]) => end > start).sort((a, b) => a[0] - b[0]);
  const merged: Array<[number, number]> = [];
  for (const [start, end] of sorted) {
    const last = merged[merged.length - 1];
    if (last !== undefined && start <= last[1]) last[1] = Math.max(last[1], end);
    else merged.push([start, end]);
  }
  return merged;
}

/** The parts of `spans` not covered by `done` (both merged lists). */
export function subtractSpans(spans: readonly Span[], done: readonly Span[]): Span[] {
  const result: Span[] = [];
  let d = 0;
  for (const [spanStart, spanEnd] of spans) {
    let start = spanStart;
    while (d < done.length && done[d][1] <= start) d++;
    for (let i = d; i < done.length && done[i][0] < spanEnd; i++) {
      if (done[i][0] > start) result.push([start, done[i][0]]);
      start = Math.max(start, done[i][1]);
    }
    if (start < spanEnd) result.push([start, spanEnd]);
  }
  return result;
}

export const spanBytes = (spans: readonly Span[]): number => spans.reduce((sum, [start, end]) => sum + end - start, 0);

/** `spans` cut at multiples of `size`, so that no piece is longer than it and pieces after the first of a span start aligned. */
export function* splitSpans(spans: readonly Span[], size: number): Generator<Span> {
  for (const [start, end] of spans) {
    for (let offset = start; offset < end;) {
      const next = Math.min(end, (Math.floor(offset / size) + 1) * size);
      yield [offset, next];
      offset = next;
    }
  }
}
