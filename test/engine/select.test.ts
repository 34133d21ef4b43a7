// engine = "auto" and explicit engines: which module is taken, and the one clear message when
// none (or both) can be used. The host's /sys/module and modprobe are stand-ins here.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, test } from 'node:test';
import { isAgentError } from '../../src/core/errors';
import { modulesForKernel, selectEngine, type ModuleHost } from '../../src/engine/select';

describe('engine selection', { timeout: 30_000 }, () => {
  let dir: string;
  let probed: string[];
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'csa-select-'));
    probed = [];
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  const load = (module: string, version?: string): void => {
    fs.mkdirSync(path.join(dir, module));
    if (version !== undefined) fs.writeFileSync(path.join(dir, module, 'version'), `${version}\n`);
  };
  /** A host on `release` where modprobe loads exactly the modules in `loadable`. */
  const host = (release: string, loadable: string[] = []): ModuleHost => ({
    sysModuleDir: dir,
    kernelRelease: release,
    modprobe: async (module) => {
      probed.push(module);
      if (!loadable.includes(module)) return false;
      load(module, '9.9');
      return true;
    },
  });

  test('auto takes the one module that is loaded, with its version', async () => {
    load('veeamblksnap', '1.0.0.0');
    assert.deepEqual(await selectEngine('auto', host('6.12.107+deb12-amd64')), { engine: 'blksnap', module: 'veeamblksnap', version: '1.0.0.0' });
    assert.deepEqual(probed, []);
  });

  test('a module without a version file still runs, with version null', async () => {
    load('veeamsnap');
    assert.deepEqual(await selectEngine('auto', host('6.1.0-57-amd64')), { engine: 'veeamsnap', module: 'veeamsnap', version: null });
  });

  test('auto refuses both modules at once: they would intercept the same disks', async () => {
    load('veeamsnap', '13.1.0.252');
    load('veeamblksnap', '1.0.0.0');
    await assert.rejects(selectEngine('auto', host('6.1.0-57-amd64')), (err: Error) =>
      isAgentError(err, 'unavailable') && /both veeamsnap and veeamblksnap are loaded/.test(err.message));
  });

  test('an explicit engine takes its module even when the other is loaded too', async () => {
    load('veeamsnap', '13.1.0.252');
    load('veeamblksnap', '1.0.0.0');
    assert.equal((await selectEngine('blksnap', host('6.1.0-57-amd64'))).engine, 'blksnap');
  });

  test('auto loads, with modprobe, only a module that fits the kernel', async () => {
    assert.equal((await selectEngine('auto', host('6.12.107+deb12-amd64', ['veeamsnap', 'veeamblksnap']))).engine, 'blksnap');
    assert.deepEqual(probed, ['veeamblksnap'], 'veeamsnap does not run on 6.12: not even tried');
  });

  test('none loaded nor loadable: one message with the module that fits this kernel', async () => {
    const message = async (release: string, choice: 'auto' | 'blksnap' = 'auto'): Promise<string> => {
      try {
        await selectEngine(choice, host(release));
      } catch (err) {
        assert.ok(isAgentError(err, 'unavailable'));
        return err.message;
      }
      throw new Error('selected an engine');
    };
    assert.match(await message('6.12.107+deb12-amd64'), /no snapshot module is loaded .*kernel 6\.12\.107\+deb12-amd64 install and load blksnap \(bdevfilter\.ko and veeamblksnap\.ko/);
    assert.doesNotMatch(await message('6.12.107+deb12-amd64'), /veeamsnap \(modprobe/);
    assert.match(await message('6.1.0-57-amd64'), /install and load veeamsnap \(modprobe veeamsnap\) or blksnap/);
    assert.match(await message('6.15.0'), /no snapshot module supports kernel 6\.15\.0/);
    assert.match(await message('6.1.0-57-amd64', 'blksnap'), /engine = "blksnap", but veeamblksnap is not loaded/);
  });

  test('kernel ranges: veeamsnap up to 6.7, blksnap 5.10 to 6.13', () => {
    assert.deepEqual(modulesForKernel('5.9.16'), ['veeamsnap']);
    assert.deepEqual(modulesForKernel('5.10.0-28-amd64'), ['veeamsnap', 'blksnap']);
    assert.deepEqual(modulesForKernel('6.7.12'), ['veeamsnap', 'blksnap']);
    assert.deepEqual(modulesForKernel('6.8.0'), ['blksnap']);
    assert.deepEqual(modulesForKernel('6.13.7'), ['blksnap']);
    assert.deepEqual(modulesForKernel('6.14.0'), []);
  });
});
