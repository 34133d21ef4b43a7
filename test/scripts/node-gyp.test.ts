// scripts/node-gyp.js finds the Node headers beside the running Node, whatever its prefix
// (Debian's /usr, nvm's ~/.nvm/versions/node/vX), and only for that Node's own version.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';

const script = path.resolve(__dirname, '../../../scripts/node-gyp.js');
// The script is plain JavaScript, outside the TypeScript project.
// eslint-disable-next-line @typescript-eslint/no-require-imports
const { nodeHeadersDir } = require(script) as { nodeHeadersDir: (execPath: string, version: string) => string | undefined };

/** A Node install under a fresh prefix: bin/node (a symlink, as nvm's `current`) and its headers. */
function fakeInstall(version: string | undefined): { prefix: string; node: string } {
  const prefix = fs.mkdtempSync(path.join(os.tmpdir(), 'csa-node-prefix-'));
  fs.mkdirSync(path.join(prefix, 'bin'));
  fs.writeFileSync(path.join(prefix, 'bin', 'node'), '');
  if (version) {
    const [major, minor, patch] = version.slice(1).split('.');
    fs.mkdirSync(path.join(prefix, 'include', 'node'), { recursive: true });
    fs.writeFileSync(path.join(prefix, 'include', 'node', 'node.h'), '');
    fs.writeFileSync(path.join(prefix, 'include', 'node', 'node_version.h'),
      `#define NODE_MAJOR_VERSION ${major}\n#define NODE_MINOR_VERSION ${minor}\n#define NODE_PATCH_VERSION ${patch}\n`);
  }
  const link = path.join(prefix, 'current-node');
  fs.symlinkSync(path.join(prefix, 'bin', 'node'), link);
  return { prefix, node: link };
}

test('the headers beside the running Node, found through symlinks', { timeout: 10_000 }, (t) => {
  const install = fakeInstall('v20.20.2');
  t.after(() => fs.rmSync(install.prefix, { recursive: true }));
  assert.equal(nodeHeadersDir(install.node, 'v20.20.2'), fs.realpathSync(install.prefix));
});

test('headers of another version, or none, are not used', { timeout: 10_000 }, (t) => {
  const other = fakeInstall('v20.19.0');
  const none = fakeInstall(undefined);
  t.after(() => [other, none].forEach((i) => fs.rmSync(i.prefix, { recursive: true })));
  assert.equal(nodeHeadersDir(other.node, 'v20.20.2'), undefined);
  assert.equal(nodeHeadersDir(none.node, 'v20.20.2'), undefined);
});
