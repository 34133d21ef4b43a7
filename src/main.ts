#!/usr/bin/env node
// Command line: one entry per sub-command, each parsing its own options strictly so a typo is
// an error with the usage text, never a silently ignored flag. A failure is one line on
// stderr: exit status 2 for bad usage or configuration, 1 for anything else.
// The Node check comes before every other import: on an old Node they fail with a stack trace.
import { exitOnUnsupportedNode } from './agent/startup';
exitOnUnsupportedNode();
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { lookupUser } from './cli/accounts';
import { runAgent } from './agent/run';
import { GEN_CERTS_USAGE, genCertsCommand } from './cli/gen-certs';
import { checkEnvironment } from './cli/check-config';
import { DEFAULT_CONFIG_FILE, loadConfig, type Config } from './config/config';
import { isAgentError } from './core/errors';
import { isUsageError, UsageError } from './cli/usage';
import { DEMO_USAGE, demoCommand } from './cli/demo';
import { PULL_USAGE, pullCommand } from './cli/pull';
import { createLogger } from './core/log';
import { COMMIT, VERSION } from './core/version';

const NAME = 'coriolis-snapshot-agent';

const USAGE = `${NAME} ${VERSION}
Takes block-level copy-on-write snapshots of whole disks (veeamsnap or blksnap kernel module), tracks the
blocks that change between snapshots, and serves each snapshot over HTTPS and NBD.

Usage:
  ${NAME} serve [--config FILE]          run the agent (default config: ${DEFAULT_CONFIG_FILE})
  ${NAME} demo --dir DIR [--api-port N] [--nbd-port N] [--disks N] [--disk-size SIZE]
                                                  run the agent on disk files with the simulated
                                                  engine: no kernel module needed
  ${NAME} gen-certs --out DIR [--hosts h1,h2] [--group GROUP] [--force]
                                                  write a CA, a server and a client certificate
  ${NAME} check-config [--config FILE] [--as-user USER]
                                                  check a config file and what it points at
  ${NAME} pull --agent URL --disk ID --out PATH --certs DIR [--snapshot ID] [--state FILE] ...
                                                  copy a disk of a running agent to a file or
                                                  block device (full, incremental or resync),
                                                  verified against the agent's digests
  ${NAME} version                        print the version and the commit it was built from
  ${NAME} COMMAND --help                 the options of one command

Logs are JSON lines (bunyan): pipe them through \`npx bunyan\` to read them.
Exit status: 0 on success, 1 when the agent fails, 2 on bad usage or configuration.
`;

const SERVE_USAGE = `usage: ${NAME} serve [--config FILE]
  --config FILE, -c FILE   the configuration (default ${DEFAULT_CONFIG_FILE}); its keys are
                           described in contrib/config.toml.sample
Runs until SIGTERM or SIGINT: downloads and NBD connections in progress then get
shutdown_grace_seconds to finish (a second signal cuts them at once). SIGHUP reopens log_file.
Under systemd (Type=notify) it reports READY=1 once both servers listen.
Exit status: 0 stopped, 1 failed (e.g. a port in use, another agent on the same database),
2 bad usage or configuration (what check-config reports).`;

const CHECK_CONFIG_USAGE = `usage: ${NAME} check-config [--config FILE] [--as-user USER]
  --config FILE, -c FILE   the configuration to check (default ${DEFAULT_CONFIG_FILE})
  --as-user USER           check as USER with its groups, as the service will run (needs root):
                           readable certificates, writable database, log and socket folders and
                           snapstore destinations, the control device, the mapped disks
Exit status: 0 fine, 2 a problem (one line each, naming the key).`;

const VERSION_USAGE = `usage: ${NAME} version`;

interface Command {
  usage: string;
  run(args: string[]): Promise<number>;
}

/** The config, and what it points at checked as this process: an invalid AgentError on the first problem. */
function loadCheckedConfig(file: string): Config {
  const config = loadConfig(file);
  const [problem] = checkEnvironment(config).problems;
  if (problem !== undefined) throw problem;
  return config;
}

/** Runs `check-config --config FILE` as `user`, with the user's groups: needs root. */
function checkConfigAsUser(user: string, file: string): number {
  if (process.getuid!() !== 0) throw new UsageError('--as-user needs root (it switches to that user to check)');
  let account;
  try {
    account = lookupUser(user);
  } catch (err) {
    throw new UsageError(`--as-user: ${(err as Error).message}`);
  }
  process.stdout.write(`checking as ${account.name} (uid ${account.uid}, gid ${account.gid}, with its groups)\n`);
  const child = spawnSync(process.execPath, [path.join(__dirname, 'cli', 'as-user.js'), account.name, String(account.uid), String(account.gid),
    'check-config', '--config', file], { stdio: 'inherit' });
  if (child.error !== undefined) throw child.error;
  return child.status ?? 1;
}

const commands: Record<string, Command> = {
  serve: {
    usage: SERVE_USAGE,
    async run(args) {
      const { values: { config: file } } = parseArgs({ args, strict: true, options: { config: { type: 'string', short: 'c' } } });
      const config = loadCheckedConfig(file ?? DEFAULT_CONFIG_FILE);
      return runAgent(config, createLogger({ logFile: config.logFile, level: config.logLevel }));
    },
  },
  demo: { usage: DEMO_USAGE, run: demoCommand },
  'gen-certs': { usage: GEN_CERTS_USAGE, run: (args) => genCertsCommand(args) },
  pull: { usage: PULL_USAGE, run: pullCommand },
  'check-config': {
    usage: CHECK_CONFIG_USAGE,
    async run(args) {
      const { values } = parseArgs({ args, strict: true, options: { config: { type: 'string', short: 'c' }, 'as-user': { type: 'string' } } });
      const file = path.resolve(values.config ?? DEFAULT_CONFIG_FILE);
      if (values['as-user'] !== undefined) return checkConfigAsUser(values['as-user'], file);
      const config = loadConfig(file);
      const { problems, notes } = checkEnvironment(config);
      for (const note of notes) process.stdout.write(`note: ${note}\n`);
      for (const problem of problems) process.stderr.write(`${NAME}: ${problem.message}\n`);
      if (problems.length > 0) return 2;
      process.stdout.write(`${config.file}: OK (engine ${config.engine})\n`);
      return 0;
    },
  },
  version: {
    usage: VERSION_USAGE,
    async run(args) {
      if (args.length > 0) throw new UsageError(`version takes no arguments, got ${args.join(' ')}`);
      process.stdout.write(`${VERSION}\ncommit ${COMMIT ?? 'none (not a release build)'}\nnode ${process.version}\n`);
      return 0;
    },
  },
};

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(USAGE);
    return name === undefined ? 2 : 0;
  }
  if (name === '--version') return commands.version.run([]);
  const command = commands[name];
  try {
    if (command === undefined) throw new UsageError(`unknown command "${name}"`);
    if (rest.includes('--help') || rest.includes('-h')) {
      process.stdout.write(`${command.usage}\n`);
      return 0;
    }
    return await command.run(rest);
  } catch (err) {
    if (isUsageError(err)) {
      process.stderr.write(`${NAME} ${name}: ${(err as Error).message}\n${command?.usage ?? USAGE}\n`);
      return 2;
    }
    // The one mapping of failures to exit statuses: configuration mistakes (invalid) 2, the
    // rest 1. Agent errors name what is at fault; anything else is reported by its message
    // alone (the log has the stack at level debug).
    const message = isAgentError(err) ? err.message : `cannot run: ${(err as Error).message ?? String(err)}`;
    process.stderr.write(`${NAME}: ${message}\n`);
    return isAgentError(err, 'invalid') ? 2 : 1;
  }
}

if (require.main === module) {
  void main(process.argv.slice(2)).then((status) => {
    process.exitCode = status;
  });
}
