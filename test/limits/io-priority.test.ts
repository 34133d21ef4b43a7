// The reader threads' I/O priority, as ionice(1) reads it back from the kernel for each thread.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { configureReaderPool, DirectReader, readerThreadIds } from '../../src/native/reader';
import type { IoPriority } from '../../src/native/io-priority';

const run = promisify(execFile);
const options = { timeout: 60_000 };

/** What `ionice -p` prints for each reader thread. */
async function ionice(): Promise<string[]> {
  const ids = readerThreadIds();
  assert.ok(ids.length > 0, 'the reader threads are running');
  return Promise.all(ids.map(async (id) => (await run('ionice', ['-p', String(id)])).stdout.trim()));
}

let dir: string;
let file: string;

before(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'csa-ioprio-'));
  file = path.join(dir, 'data.bin');
  fs.writeFileSync(file, Buffer.alloc(1024 * 1024, 7));
});

after(() => fs.rmSync(dir, { recursive: true, force: true }));

describe('reader I/O priority', () => {
  const expected: Array<[IoPriority, string]> = [
    ['idle', 'idle'],
    ['best-effort-low', 'best-effort: prio 7'],
    ['normal', 'none: prio 0'],
  ];
  for (const [priority, shown] of expected) {
    test(`"${priority}" is set on every reader thread`, options, async () => {
      configureReaderPool({ ioPriority: priority });
      assert.deepEqual(new Set(await ionice()), new Set([shown]));
    });
  }

  test('threads started later take the priority too, and the reads go on', options, async () => {
    configureReaderPool({ ioThreads: 2 });
    configureReaderPool({ ioPriority: 'idle' });
    configureReaderPool({ ioThreads: 12 });
    const reader = await DirectReader.open(file);
    try {
      const reads = await Promise.all(Array.from({ length: 24 }, (_, i) => reader.read(i * 4096, 4096)));
      assert.ok(reads.every((data) => data.equals(Buffer.alloc(4096, 7))));
    } finally {
      await reader.close();
    }
    // The new threads register as they start; give them a moment.
    for (let i = 0; i < 100 && readerThreadIds().length < 12; i++) await sleep(10);
    const shown = await ionice();
    assert.equal(shown.length, 12);
    assert.deepEqual(new Set(shown), new Set(['idle']));
  });

  test('a name that is not a priority is refused before anything changes', options, async () => {
    configureReaderPool({ ioPriority: 'best-effort-low' });
    assert.throws(() => configureReaderPool({ ioPriority: 'realtime' as IoPriority }), /ioPriority must be one of normal, best-effort-low, idle/);
    assert.deepEqual(new Set(await ionice()), new Set(['best-effort: prio 7']));
  });
});
