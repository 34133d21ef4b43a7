// The version users see: package.json's, read once so the two never disagree.
import fs from 'node:fs';
import path from 'node:path';

function findPackageJson(dir: string): string {
  const candidate = path.join(dir, 'package.json');
  if (fs.existsSync(candidate)) return candidate;
  const parent = path.dirname(dir);
  if (parent === dir) throw new Error('package.json not found above ' + __dirname);
  return findPackageJson(parent);
}

export const VERSION = (JSON.parse(fs.readFileSync(findPackageJson(__dirname), 'utf8')) as { version: string }).version;
