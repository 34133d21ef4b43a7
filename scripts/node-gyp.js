#!/usr/bin/env node
// Runs node-gyp against the headers of the Node that runs this script, found beside it: Debian's
// and NodeSource's Node (prefix /usr) and nvm's (~/.nvm/versions/node/vX) install them under
// PREFIX/include/node. Without them node-gyp would download headers, and there may be no network.
//   node scripts/node-gyp.js rebuild|build|...   node-gyp with --nodedir
//   node scripts/node-gyp.js --print-nodedir     the directory, for npm_config_nodedir
// An npm_config_nodedir already set (by .npmrc, the environment or --nodedir) is left alone.
'use strict';
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

/** PREFIX of a Node whose headers at PREFIX/include/node are this Node's version, or undefined. */
function nodeHeadersDir(execPath = process.execPath, version = process.version) {
  const prefix = path.dirname(path.dirname(fs.realpathSync(execPath)));
  try {
    const header = fs.readFileSync(path.join(prefix, 'include', 'node', 'node_version.h'), 'utf8');
    const part = (name) => header.match(new RegExp(`#define NODE_${name}_VERSION (\\d+)`))?.[1];
    const found = `v${part('MAJOR')}.${part('MINOR')}.${part('PATCH')}`;
    return found === version && fs.existsSync(path.join(prefix, 'include', 'node', 'node.h')) ? prefix : undefined;
  } catch {
    return undefined;
  }
}

function main(args) {
  const dir = process.env.npm_config_nodedir || nodeHeadersDir();
  if (args[0] === '--print-nodedir') {
    if (!dir) {
      process.stderr.write(`no headers for Node ${process.version} beside ${process.execPath} (PREFIX/include/node)\n`);
      return 1;
    }
    process.stdout.write(`${dir}\n`);
    return 0;
  }
  if (!dir) process.stderr.write(`node-gyp.js: no local headers for Node ${process.version}; node-gyp will download them\n`);
  const gypArgs = [...args, ...(dir ? [`--nodedir=${dir}`] : [])];
  let local;
  try {
    local = require.resolve('node-gyp/bin/node-gyp.js');
  } catch {
    // Without devDependencies (npm ci --omit=dev): the node-gyp npm puts on the scripts' PATH.
  }
  const result = local ? spawnSync(process.execPath, [local, ...gypArgs], { stdio: 'inherit' }) : spawnSync('node-gyp', gypArgs, { stdio: 'inherit' });
  if (result.error) process.stderr.write(`node-gyp.js: cannot run node-gyp: ${result.error.message}\n`);
  return result.status ?? 1;
}

module.exports = { nodeHeadersDir };

if (require.main === module) process.exitCode = main(process.argv.slice(2));
