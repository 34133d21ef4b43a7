// The snapshot lifecycle suite against the real blksnap module: the VM's origin disks, and
// snapstore files on an ext4 filesystem on its store disk.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { BlksnapEngine } from '../../src/engine/blksnap';
import { queryBlockDevice } from '../../src/native/blockdev';
import { MiB, pattern, writeDisk, type Machine } from '../snapshots/helpers/env';
import { lifecycleSuite } from '../snapshots/lifecycle-suite';
import { guestDisks, blksnapLoaded, vmSkipReason } from './run';

const skip = vmSkipReason() || (blksnapLoaded() ? false : 'BLKSNAP_KO not set: no module to test');

async function blksnapMachine(): Promise<Machine> {
  const origins = guestDisks().filter((d) => d.role === 'origin').map((d) => d.device);
  const store = guestDisks().find((d) => d.role === 'store')!.device;
  const base = await fsp.mkdtemp(path.join(os.tmpdir(), 'csa-vm-blksnap-lifecycle-'));
  const mountPoint = path.join(base, 'store');
  // A directory of the filesystem, not its root, which holds lost+found.
  const location = path.join(mountPoint, 'snapstores');
  fs.mkdirSync(mountPoint);
  execFileSync('mkfs.ext4', ['-q', '-F', store]);
  execFileSync('mount', [store, mountPoint]);
  fs.mkdirSync(location);
  origins.forEach((disk, index) => writeDisk(disk, 0, pattern(4 * MiB, index + 1)));
  const devices = origins.map((disk) => {
    const info = queryBlockDevice(disk);
    return { major: info.major, minor: info.minor };
  });
  return {
    disks: origins,
    diskSize: queryBlockDevice(origins[0]!).size,
    location,
    stateDir: base,
    async newEngine() {
      const engine = new BlksnapEngine({ stateDir: path.join(base, 'engine') });
      await engine.start();
      return engine;
    },
    devices: () => devices,
    cbtBlockSize: 64 * 1024,
    async dispose() {
      execFileSync('umount', [mountPoint]);
      await fsp.rm(base, { recursive: true, force: true });
    },
  };
}

lifecycleSuite('blksnap', blksnapMachine, { skip });
