// The blksnap engine where no module is needed: a missing module is one clear error, and the
// engine never starts on a device that does not answer blksnap's ioctls. The rest of its
// behaviour runs against the real module in the VM (test/vm/blksnap-*.test.ts).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import { BlksnapEngine } from '../../src/engine/blksnap';
import { engineMemory } from '../helpers/engine-memory';

describe('blksnap engine without the module', { timeout: 30_000 }, () => {
  const stateDir = (): string => fs.mkdtempSync(path.join(os.tmpdir(), 'csa-blksnap-engine-'));

  test('a missing control device says which module to load', async () => {
    const engine = new BlksnapEngine({ memory: engineMemory(stateDir(), 'blksnap'), controlDevice: '/nonexistent/veeamblksnap' });
    await assert.rejects(engine.start(), (err: NodeJS.ErrnoException) =>
      err.code === 'ENOENT' && /is the blksnap module loaded \(modprobe veeamblksnap\)/.test(err.message));
    await assert.rejects(engine.listTrackers(), { code: 'ENODEV' }, 'a failed start leaves the engine unusable, not half-started');
  });

  test('a device that is not blksnap\'s control device fails the start', async () => {
    const engine = new BlksnapEngine({ memory: engineMemory(stateDir(), 'blksnap'), controlDevice: '/dev/null' });
    await assert.rejects(engine.start(), { code: 'ENOTTY' });
    await engine.close();
  });
});
