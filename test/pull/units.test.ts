// The pull's pieces that need no agent: span arithmetic, the state file's validation and
// atomic writes, the progress line formats.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { test } from 'node:test';
import { mergeSpans, splitSpans, subtractSpans } from '../../src/pull/ranges';
import { readState, writeState, type PullState } from '../../src/pull/state';
import { barProgress, formatBytes, jsonProgress } from '../../src/pull/progress';
import { apiBase } from '../../src/pull/http';

test('spans merge, subtract and split', { timeout: 10_000 }, () => {
  assert.deepEqual(mergeSpans([[10, 20], [0, 5], [5, 7], [15, 30], [40, 40]]), [[0, 7], [10, 30]]);
  assert.deepEqual(subtractSpans([[0, 100]], [[10, 20], [50, 60]]), [[0, 10], [20, 50], [60, 100]]);
  assert.deepEqual(subtractSpans([[0, 10], [20, 30]], [[0, 25]]), [[25, 30]]);
  assert.deepEqual(subtractSpans([[0, 10]], []), [[0, 10]]);
  assert.deepEqual([...splitSpans([[3, 20]], 8)], [[3, 8], [8, 16], [16, 20]]);
});

test('the state file: written atomically, read back, and refused when it is not a pull state', { timeout: 10_000 }, () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'csa-pull-state-'));
  try {
    const file = path.join(dir, 'state.json');
    assert.equal(readState(file), null);
    const state: PullState = {
      version: 1, agent: 'https://h:1/api/v1', disk: 'd', image_size: 10, complete: null,
      in_progress: { snapshot_id: '1', generation_id: 'g', snapshot_number: 1, owned: true, mode: 'full', base: null, done: [[0, 4]] },
    };
    writeState(file, state);
    assert.deepEqual(readState(file), state);
    assert.deepEqual(fs.readdirSync(dir), ['state.json'], 'no temporary file is left');
    for (const bad of ['', 'null', '[]', '{"version": 2}', JSON.stringify({ ...state, image_size: -1.5 }),
      JSON.stringify({ ...state, in_progress: { ...state.in_progress, mode: 'other' } }),
      JSON.stringify({ ...state, in_progress: { ...state.in_progress, done: [[0]] } })]) {
      fs.writeFileSync(file, bad);
      assert.throws(() => readState(file), (err: Error & { kind?: string }) => err.kind === 'invalid', bad);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('the agent URL: https only, /api/v1 added when missing', { timeout: 10_000 }, () => {
  assert.equal(apiBase('https://h:9999').href, 'https://h:9999/api/v1');
  assert.equal(apiBase('https://h:9999/api/v1/').href, 'https://h:9999/api/v1');
  for (const bad of ['http://h', 'h:9999', 'https://h/?x=1']) assert.throws(() => apiBase(bad), (err: Error & { kind?: string }) => err.kind === 'invalid');
});

test('progress: JSON lines at most once an interval, and the last of each phase', { timeout: 10_000 }, () => {
  const stream = new PassThrough();
  const sink = jsonProgress(stream, 60_000);
  const progress = { phase: 'copy' as const, mode: 'full', doneBytes: 1, totalBytes: 4, fetchedBytes: 1 };
  sink.report(progress, false);
  sink.report({ ...progress, doneBytes: 2 }, false);
  sink.report({ ...progress, doneBytes: 4 }, true);
  const lines = String(stream.read()).trim().split('\n').map((line) => JSON.parse(line) as { done_bytes: number });
  assert.deepEqual(lines.map((line) => line.done_bytes), [1, 4]);
  assert.equal(formatBytes(1536), '1.5 KiB');
  assert.equal(formatBytes(100), '100 B');
});

test('progress on a terminal: one line redrawn in place, with the bar, bytes, rate and ETA, cleared at the end', { timeout: 10_000 }, () => {
  const written: string[] = [];
  const terminal = { columns: 120, write: (text: string) => written.push(text) } as unknown as NodeJS.WriteStream;
  const sink = barProgress(terminal, 10);
  const progress = { phase: 'copy' as const, mode: 'incremental', doneBytes: 0, totalBytes: 4 * 1024 * 1024, fetchedBytes: 0 };
  sink.report(progress, false);
  sink.report({ ...progress, doneBytes: 2 * 1024 * 1024 }, true);
  sink.end();
  assert.equal(written.length, 3);
  assert.ok(written.every((text) => text.startsWith('\r') && !text.includes('\n')), 'redrawn in place, never a new line');
  assert.match(written[1], /^\rcopy \(incremental\) \[#####\.{5}\]  50%  2\.0 MiB \/ 4\.0 MiB  [\d.]+ (B|KiB|MiB|GiB)\/s  ETA (\d\d:\d\d|--:--)\x1b\[K$/);
  assert.equal(written[2], '\r\x1b[K');
});
