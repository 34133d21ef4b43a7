// The log tells the story of each snapshot: one info record when it is created or deleted, per
// export published or withdrawn, per snapstore growth, and the overflow, each with its id.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { PassThrough } from 'node:stream';
import { describe, test } from 'node:test';
import { startAgent } from '../../src/agent/start';
import { loadConfig } from '../../src/config/config';
import { createLogger } from '../../src/core/log';
import { records, scratch } from './helpers';

const MiB = 1024 * 1024;

function capturingLogger(): { log: ReturnType<typeof createLogger>; records: () => Array<Record<string, unknown>> } {
  const stream = new PassThrough();
  let text = '';
  stream.on('data', (chunk: Buffer) => {
    text += chunk.toString();
  });
  return { log: createLogger({ logFile: null, stderr: stream }), records: () => records(text) };
}

/** Overwrites `bytes` of a disk file with data unlike what the demo wrote there. */
function scribble(file: string, offset: number, bytes: number): void {
  const fd = fs.openSync(file, 'r+');
  try {
    fs.writeSync(fd, Buffer.alloc(bytes, 0x5a), 0, bytes, offset);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** Polls until `condition` holds; stops with the test, so a timed-out test does not keep the file alive. */
async function until(condition: () => boolean, signal: AbortSignal): Promise<void> {
  while (!condition()) {
    signal.throwIfAborted();
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

describe('the story in the log', () => {
  test('created, published, grown, withdrawn, deleted: each once, with the snapshot id', { timeout: 120_000 }, async (t) => {
    const s = await scratch();
    t.after(() => s.remove());
    const { log, records: logged } = capturingLogger();
    const agent = await startAgent(loadConfig(s.configFile), log);
    t.after(() => agent.stop());
    const snapshot = await agent.service.createSnapshot(['disk0', 'disk1']);
    const about = (msg: string): Array<Record<string, unknown>> => logged().filter((r) => r.msg === msg && r.snapshot === snapshot.id);
    assert.deepEqual(about('snapshot created').map((r) => [r.level, r.disks]), [[30, ['disk0', 'disk1']]]);
    assert.deepEqual(about('export published').map((r) => r.export).sort(), [`${snapshot.id}/disk0`, `${snapshot.id}/disk1`]);

    // Less than the snapstore holds, so it grows rather than overflows.
    const grownBefore = about('snapstore grown').length;
    scribble(s.disks[0], 0, 4 * MiB);
    await until(() => about('snapstore grown').length > grownBefore, t.signal);
    assert.equal(about('snapstore grown').at(-1)!.disk, 'disk0');

    await agent.service.deleteSnapshot(snapshot.id);
    assert.deepEqual(about('export withdrawn').map((r) => r.export).sort(), [`${snapshot.id}/disk0`, `${snapshot.id}/disk1`]);
    assert.equal(about('snapshot deleted').length, 1);
  });

  test('an overflow names its snapshot', { timeout: 120_000 }, async (t) => {
    // Growth steps larger than the destination's free space: the snapstore cannot grow.
    const s = await scratch({ snapStoreFileSize: 2 ** 50 });
    t.after(() => s.remove());
    const { log, records: logged } = capturingLogger();
    const agent = await startAgent(loadConfig(s.configFile), log);
    t.after(() => agent.stop());
    const snapshot = await agent.service.createSnapshot(['disk0']);
    scribble(s.disks[0], 0, 24 * MiB);
    await until(() => logged().some((r) => r.msg === 'snapstore overflowed: its snapshot data is lost'), t.signal);
    const overflow = logged().find((r) => r.msg === 'snapstore overflowed: its snapshot data is lost')!;
    assert.deepEqual([overflow.snapshot, overflow.disk], [snapshot.id, 'disk0']);
    assert.ok(logged().some((r) => r.msg === 'snapshot failed' && r.snapshot === snapshot.id));
  });
});
