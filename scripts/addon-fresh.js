#!/usr/bin/env node
// Rebuilds the native addon when any of its sources (src/native/*.cc, *.h, binding.gyp) is newer
// than the built module, or it is missing: `npm test` runs this first, so a test never runs
// against an addon built from older sources.
'use strict';
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const built = path.join(root, 'build', 'Release', 'coriolis_native.node');

function sources() {
  const dir = path.join(root, 'src', 'native');
  return [path.join(root, 'binding.gyp'), ...fs.readdirSync(dir).filter((name) => /\.(cc|h)$/.test(name)).map((name) => path.join(dir, name))];
}

function stale() {
  let builtAt;
  try {
    builtAt = fs.statSync(built).mtimeMs;
  } catch {
    return 'the addon is not built';
  }
  const newer = sources().filter((file) => fs.statSync(file).mtimeMs > builtAt);
  return newer.length === 0 ? null : `changed since the last build: ${newer.map((file) => path.relative(root, file)).join(', ')}`;
}

const reason = stale();
if (reason !== null) {
  process.stderr.write(`rebuilding the native addon (${reason})\n`);
  const result = spawnSync(process.execPath, [path.join(__dirname, 'node-gyp.js'), 'rebuild'], { cwd: root, stdio: 'inherit' });
  process.exit(result.status ?? 1);
}
