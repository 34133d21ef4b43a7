// The version users see: package.json's, read once so the two never disagree. A release has
// build-info.json beside package.json (release/build.js writes it), naming the commit it was
// built from; a development tree has none.
import fs from 'node:fs';
import path from 'node:path';

function findPackageJson(dir: string): string {
  const candidate = path.join(dir, 'package.json');
  if (fs.existsSync(candidate)) return candidate;
  const parent = path.dirname(dir);
  if (parent === dir) throw new Error('package.json not found above ' + __dirname);
  return findPackageJson(parent);
}

const packageJson = findPackageJson(__dirname);

export const VERSION = (JSON.parse(fs.readFileSync(packageJson, 'utf8')) as { version: string }).version;

function readCommit(): string | null {
  let text: string;
  try {
    text = fs.readFileSync(path.join(path.dirname(packageJson), 'build-info.json'), 'utf8');
  } catch {
    return null;
  }
  return (JSON.parse(text) as { commit: string }).commit;
}

/** The commit a release was built from; null in a development tree. */
export const COMMIT = readCommit();
