// The engine conformance suite against the real veeamsnap module, inside the VM.
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { VeeamsnapEngine } from '../../src/engine/veeamsnap';
import { queryBlockDevice } from '../../src/native/blockdev';
import { engineConformance, type ConformanceTarget, type TestDisk } from '../engine/conformance';
import { readFile, writeDisk } from '../snapshots/helpers/env';
import { guestDisks, veeamsnapLoaded, vmSkipReason } from './run';

const skip = vmSkipReason() || (veeamsnapLoaded() ? false : 'VEEAMSNAP_KO not set: no module to test');

engineConformance('veeamsnap', async (): Promise<ConformanceTarget> => {
  const stateDir = await fsp.mkdtemp(path.join(os.tmpdir(), 'csa-veeamsnap-'));
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
      const engine = new VeeamsnapEngine({ stateDir });
      await engine.start();
      return engine;
    },
    // Buffered, then flushed: the module sees the writes when they reach the block layer.
    writeDisk: async (disk, offset, data) => writeDisk(disk.path, offset, data),
    readDisk: async (disk, offset, length) => readFile(disk.path, offset, length),
    storage: {
      device: { major: storeInfo.major, minor: storeInfo.minor },
      // Ranges go round the store disk: by the time they come back, their snapstore is gone.
      take(bytes) {
        if (next + bytes > storeInfo.size) next = 0;
        const range = { offset: next, length: bytes };
        next += bytes;
        return [range];
      },
    },
    eventTimeoutMs: 30_000,
    async dispose() {
      await fsp.rm(stateDir, { recursive: true, force: true });
    },
  };
}, { skip });
