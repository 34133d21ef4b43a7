// One agent per state: an exclusive flock(2) on a file beside the database, taken before the
// engine or the inventory look at anything. A second agent on the same state would take the
// first one's snapshot in creation for an interrupted one and undo it. The kernel releases the
// lock when the holder dies, kill -9 included, so a stale lock cannot exist; the file only
// carries the holder's pid for the message.
import fs from 'node:fs';
import path from 'node:path';
import { tryLockExclusive } from '../native/process';
import { unavailable } from '../core/errors';

export interface StateLock {
  readonly file: string;
  release(): void;
}

export function lockFileOf(databaseFile: string): string {
  return `${databaseFile}.lock`;
}

/** Throws an `unavailable` AgentError naming the database and the holder's pid when another agent holds it. */
export function lockState(databaseFile: string): StateLock {
  const file = lockFileOf(databaseFile);
  let fd: number;
  try {
    fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
    fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600);
  } catch (err) {
    throw unavailable(`database_file: cannot create the lock file ${file}: ${(err as Error).message}`, err);
  }
  try {
    if (!tryLockExclusive(fd)) {
      const holder = fs.readFileSync(fd, 'utf8').trim();
      throw unavailable(`database_file: ${databaseFile} is in use by another agent (pid ${holder || 'unknown'}): ` +
        'stop it first, or give this one its own database_file');
    }
    fs.ftruncateSync(fd);
    fs.writeSync(fd, `${process.pid}\n`, 0);
  } catch (err) {
    fs.closeSync(fd);
    throw err;
  }
  return {
    file,
    release: () => fs.closeSync(fd),
  };
}
