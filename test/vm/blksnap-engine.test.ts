// The engine conformance suite against the real blksnap module (bdevfilter + veeamblksnap), inside the VM.
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { BlksnapEngine } from '../../src/engine/blksnap';
import { queryBlockDevice } from '../../src/native/blockdev';
import { engineConformance, type ConformanceTarget, type TestDisk } from '../engine/conformance';
import { readFile, writeDisk } from '../snapshots/helpers/env';
import { blksnapLoaded, guestDisks, vmSkipReason } from './run';

const skip = vmSkipReason() || (blksnapLoaded() ? false : 'BLKSNAP_KO not set: no module to test');

engineConformance('blksnap', async (): Promise<ConformanceTarget> => {
  const stateDir = await fsp.mkdtemp(path.join(os.tmpdir(), 'csa-blksnap-'));
  const disks: TestDisk[] = guestDisks().filter((d) => d.role === 'origin').map((d) => {
    const info = queryBlockDevice(d.device);
    return { path: d.device, device: { major: info.major, minor: info.minor }, size: info.size };
  });
  const store = guestDisks().find((d) => d.role === 'store')!;
  const storeInfo = queryBlockDevice(store.device);
  let next = 0;
  return {
    disks,
    async newEngine() {
      const engine = new BlksnapEngine({ stateDir });
      await engine.start();
      return engine;
    },
    writeDisk: async (disk, offset, data) => writeDisk(disk.path, offset, data),
    readDisk: async (disk, offset, length) => readFile(disk.path, offset, length),
    storage: {
      device: { major: storeInfo.major, minor: storeInfo.minor },
      take(bytes) {
        if (next + bytes > storeInfo.size) next = 0;
        const range = { offset: next, length: bytes };
        next += bytes;
        return [range];
      },
    },
    eventTimeoutMs: 30_000,
    // The module's default tracking block (2^16) and the errno its corruption event carries.
    cbtBlockSize: 64 * 1024,
    overflowCode: 'ENOSPC',
    async dispose() {
      await fsp.rm(stateDir, { recursive: true, force: true });
    },
  };
}, { skip });
