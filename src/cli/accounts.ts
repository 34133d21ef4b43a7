// Users and groups by name, through the system's name service (getent), which Node cannot query.
import { execFileSync } from 'node:child_process';

export interface Account {
  name: string;
  uid: number;
  gid: number;
}

function getent(database: 'passwd' | 'group', name: string): string[] | null {
  if (!/^[A-Za-z0-9_.][A-Za-z0-9_.-]*\$?$/.test(name)) throw new Error(`${JSON.stringify(name)} is not a valid ${database === 'passwd' ? 'user' : 'group'} name`);
  try {
    return execFileSync('getent', [database, name], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim().split(':');
  } catch (err) {
    // getent exits 2 when the name is unknown.
    if ((err as { status?: number }).status === 2) return null;
    throw err;
  }
}

export function lookupUser(name: string): Account {
  const fields = getent('passwd', name);
  if (fields === null) throw new Error(`no such user: ${name}`);
  return { name, uid: Number(fields[2]), gid: Number(fields[3]) };
}

export function lookupGroupId(name: string): number {
  const fields = getent('group', name);
  if (fields === null) throw new Error(`no such group: ${name}`);
  return Number(fields[2]);
}
