// File steps of the model's "kernel" state: a file appears whole under its final name, or not
// at all. Model files only have to outlive the agent process, and the page cache does: a power
// cut is a reboot, which discards them anyway (see the boot id). So data files are renamed into
// place without fsync; only the commit point is fsynced, so that it is always whole and readable.
import { execFile } from 'node:child_process';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);

/** Writes the commit point: whole, and on disk before the call returns. */
export async function writeDurably(file: string, data: string): Promise<void> {
  const handle = await fsp.open(`${file}.tmp`, 'w');
  try {
    await handle.writeFile(data);
    await handle.sync();
  } finally {
    await handle.close();
  }
  await fsp.rename(`${file}.tmp`, file);
  const dir = await fsp.open(path.dirname(file), 'r');
  try {
    await dir.sync();
  } finally {
    await dir.close();
  }
}

export async function writeWhole(file: string, data: Buffer): Promise<void> {
  await fsp.writeFile(`${file}.tmp`, data);
  await fsp.rename(`${file}.tmp`, file);
}

/** Point-in-time copy: a reflink where the filesystem can, else a copy that keeps holes. */
export async function copyWhole(source: string, file: string): Promise<void> {
  await fsp.rm(`${file}.tmp`, { force: true });
  await execFileAsync('cp', ['--reflink=auto', '--sparse=always', source, `${file}.tmp`]);
  await fsp.rename(`${file}.tmp`, file);
}
