// The packages' maintainer scripts, written once in release/scripts/ and wrapped for each package
// manager's calling convention.
'use strict';
const fs = require('node:fs');
const path = require('node:path');

/**
 * A script: `first` (shell, always run), then the body of release/scripts/NAME.sh when `when`
 * (a shell condition) holds, with `args` as its arguments.
 */
function script(name, when, args = '', first = '') {
  const body = fs.readFileSync(path.join(__dirname, 'scripts', `${name}.sh`), 'utf8');
  return `#!/bin/sh\nset -e\n${first}${when} || exit 0\nset -- ${args}\n${body}exit 0\n`;
}

module.exports = { script };
