// What the .deb and the .rpm share: the package's name, where the release directory goes, how a
// package's file tree is laid out, and the maintainer scripts, written once in release/scripts/
// and wrapped for each package manager's calling convention.
'use strict';
const fs = require('node:fs');
const path = require('node:path');

const PACKAGE = 'coriolis-snapshot-agent';
const PREFIX = `/opt/${PACKAGE}`;

/**
 * A package's tree in `tree`: the release directory `dir` at PREFIX, the command in /usr/bin, and
 * `files` (release-relative path -> absolute path in the package).
 */
function layout(dir, tree, files) {
  fs.cpSync(dir, path.join(tree, PREFIX.slice(1)), { recursive: true, verbatimSymlinks: true });
  fs.mkdirSync(path.join(tree, 'usr', 'bin'), { recursive: true });
  fs.symlinkSync(`${PREFIX}/bin/${PACKAGE}`, path.join(tree, 'usr', 'bin', PACKAGE));
  for (const [from, to] of Object.entries(files)) {
    fs.mkdirSync(path.dirname(path.join(tree, to)), { recursive: true });
    fs.copyFileSync(path.join(dir, from), path.join(tree, to));
  }
}

/**
 * A script: `first` (shell, always run), then the body of release/scripts/NAME.sh when `when`
 * (a shell condition) holds, with `args` as its arguments.
 */
function script(name, when, args = '', first = '') {
  const body = fs.readFileSync(path.join(__dirname, 'scripts', `${name}.sh`), 'utf8');
  return `#!/bin/sh\nset -e\n${first}${when} || exit 0\nset -- ${args}\n${body}exit 0\n`;
}

module.exports = { layout, script, PACKAGE, PREFIX };
