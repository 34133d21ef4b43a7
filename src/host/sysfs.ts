// Small readers of the kernel's block-device tree in sysfs. The root is a parameter so tests can
// point it at a fake tree with the same layout (/block, /class/block, /dev/block, /devices).
// Every reader rejects on a missing or malformed attribute; callers decide what that means.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { parseDeviceId, showDevice, type DeviceId } from '../core/devices';
import { AgentError, errorCode } from '../core/errors';

/** A sysfs attribute that is missing or does not hold what it should (the errno name, when reading failed). */
function sysfsError(file: string, problem: string, cause?: unknown): AgentError {
  return new AgentError('internal', `${file}: ${problem}`, { code: errorCode(cause), cause });
}

/** A dev_t as stat returns it (glibc's major/minor encoding). */
export function decodeDeviceNumber(dev: bigint): DeviceId {
  return {
    major: Number(((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn)),
    minor: Number((dev & 0xffn) | ((dev >> 12n) & ~0xffn)),
  };
}

/** The device holding a file's filesystem (st_dev). */
export function fileSystemDevice(file: string): DeviceId {
  return decodeDeviceNumber(fs.statSync(file, { bigint: true }).dev);
}

/** The kernel turns '/' in a device name into '!' for sysfs (cciss/c0d0 is cciss!c0d0). */
export const devName = (kernelName: string): string => kernelName.replace(/!/g, '/');
export const kernelName = (name: string): string => name.replace(/\//g, '!');

/** Kernel names never contain '/', and '.', '..' would leave the directory. */
const isKernelName = (name: string): boolean => /^[^/\0]+$/.test(name) && name !== '.' && name !== '..';

export class Sysfs {
  constructor(readonly root = '/sys') {}

  /** Whole devices (disks, loop, dm, md...), sorted by name; partitions are not listed here. */
  async blockNames(): Promise<string[]> {
    return (await fsp.readdir(path.join(this.root, 'block'))).sort();
  }

  /** Directory of any block device, whole or partition. */
  dir(name: string): string {
    return path.join(this.root, 'class', 'block', name);
  }

  exists(name: string): boolean {
    return isKernelName(name) && fs.existsSync(this.dir(name));
  }

  async read(name: string, attribute: string): Promise<string> {
    const file = path.join(this.dir(name), attribute);
    try {
      return (await fsp.readFile(file, 'utf8')).trim();
    } catch (err) {
      throw sysfsError(file, (err as Error).message, err);
    }
  }

  /** A non-negative integer attribute (sizes in sysfs are in 512-byte units whatever the disk). */
  async readNumber(name: string, attribute: string): Promise<number> {
    const text = await this.read(name, attribute);
    const value = Number(text);
    if (!/^\d+$/.test(text) || !Number.isSafeInteger(value)) {
      throw sysfsError(path.join(this.dir(name), attribute), `expected a non-negative integer, found ${JSON.stringify(text.slice(0, 40))}`);
    }
    return value;
  }

  async device(name: string): Promise<DeviceId> {
    const text = await this.read(name, 'dev');
    const device = parseDeviceId(text);
    if (device === undefined) throw sysfsError(path.join(this.dir(name), 'dev'), `expected MAJOR:MINOR, found ${JSON.stringify(text.slice(0, 40))}`);
    return device;
  }

  /** Kernel name of the block device with this number, whole or partition. */
  async nameOf(device: DeviceId): Promise<string | undefined> {
    try {
      return path.basename(await fsp.realpath(path.join(this.root, 'dev', 'block', showDevice(device))));
    } catch {
      return undefined;
    }
  }

  isPartition(name: string): boolean {
    return fs.existsSync(path.join(this.dir(name), 'partition'));
  }

  /** A partition's directory sits inside its disk's. */
  async parentDisk(partition: string): Promise<string> {
    return path.basename(path.dirname(await fsp.realpath(this.dir(partition))));
  }

  /** Partitions of a whole device, in partition-number order. */
  async partitions(disk: string): Promise<string[]> {
    const entries = await fsp.readdir(this.dir(disk), { withFileTypes: true });
    const numbered: Array<{ name: string; number: number }> = [];
    for (const entry of entries) {
      if (!entry.isDirectory() || !this.isPartition(entry.name)) continue;
      numbered.push({ name: entry.name, number: await this.readNumber(entry.name, 'partition') });
    }
    return numbered.sort((a, b) => a.number - b.number).map((p) => p.name);
  }

  /** Devices this one is built on (dm and md members); empty for plain disks. */
  async slaves(name: string): Promise<string[]> {
    return this.listDir(name, 'slaves');
  }

  /** Devices built on this one. */
  async holders(name: string): Promise<string[]> {
    return this.listDir(name, 'holders');
  }

  /** Loop, dm, md, zram, nbd, ram... live under /sys/devices/virtual. */
  async isVirtual(name: string): Promise<boolean> {
    const real = await fsp.realpath(this.dir(name));
    const virtual = await fsp.realpath(path.join(this.root, 'devices', 'virtual')).catch(() => undefined);
    return virtual !== undefined && real.startsWith(virtual + path.sep);
  }

  private async listDir(name: string, sub: string): Promise<string[]> {
    try {
      return (await fsp.readdir(path.join(this.dir(name), sub))).sort();
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw sysfsError(path.join(this.dir(name), sub), (err as Error).message, err);
    }
  }
}
