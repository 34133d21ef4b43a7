#!/usr/bin/env node
// Command line: one entry per sub-command, each parsing its own options strictly so a typo is
// an error with the usage text, never a silently ignored flag.
import { parseArgs } from 'node:util';
import { ConfigError, DEFAULT_CONFIG_FILE, loadConfig } from './config';
import { createLogger } from './log';
import { runAgent } from './agent';
import { genCertsCommand } from './certs';
import { demoCommand } from './demo';
import { VERSION } from './version';

const USAGE = `coriolis-snapshot-agent ${VERSION}
Takes block-level copy-on-write snapshots of whole disks (veeamsnap kernel module), tracks the
blocks that change between snapshots, and serves each snapshot over HTTPS and NBD.

Usage:
  coriolis-snapshot-agent serve [--config FILE]   run the agent (default config: ${DEFAULT_CONFIG_FILE})
  coriolis-snapshot-agent demo --dir DIR [--api-port N] [--nbd-port N] [--disks N] [--disk-size SIZE]
                                                  run the agent on disk files with the simulated
                                                  engine: no kernel module needed
  coriolis-snapshot-agent gen-certs --out DIR [--hosts h1,h2] [--force]
                                                  write a CA, a server and a client certificate
  coriolis-snapshot-agent check-config [--config FILE]
                                                  validate a config file and exit
  coriolis-snapshot-agent version                 print the version
  coriolis-snapshot-agent --help                  print this text

Exit status: 0 on success, 1 when the agent fails, 2 on bad usage or configuration.
`;

class UsageError extends Error {}

type Command = (args: string[]) => Promise<number>;

function configOption(args: string[]): string {
  const { values } = parseArgs({ args, options: { config: { type: 'string', short: 'c' } }, strict: true });
  return values.config ?? DEFAULT_CONFIG_FILE;
}

const commands: Record<string, Command> = {
  async serve(args) {
    const config = loadConfig(configOption(args));
    const log = createLogger({ logFile: config.logFile });
    return runAgent(config, log);
  },
  demo: demoCommand,
  'gen-certs': genCertsCommand,
  async 'check-config'(args) {
    const config = loadConfig(configOption(args));
    process.stdout.write(`${config.file}: OK (engine ${config.engine})\n`);
    return 0;
  },
  async version(args) {
    if (args.length > 0) throw new UsageError(`version takes no arguments, got ${args.join(' ')}`);
    process.stdout.write(`${VERSION}\n`);
    return 0;
  },
};

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(USAGE);
    return name === undefined ? 2 : 0;
  }
  if (name === '--version') return commands.version!([]);
  const command = commands[name];
  try {
    if (command === undefined) throw new UsageError(`unknown command "${name}"`);
    if (rest.includes('--help') || rest.includes('-h')) {
      process.stdout.write(USAGE);
      return 0;
    }
    return await command(rest);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`coriolis-snapshot-agent: ${err.message}\n`);
      return 2;
    }
    // parseArgs reports unknown or malformed options with these codes.
    const code = (err as { code?: string }).code;
    if (err instanceof UsageError || code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' || code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE' || code === 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL') {
      process.stderr.write(`coriolis-snapshot-agent: ${(err as Error).message}\n\n${USAGE}`);
      return 2;
    }
    process.stderr.write(`coriolis-snapshot-agent: ${(err as Error).stack ?? String(err)}\n`);
    return 1;
  }
}

if (require.main === module) {
  main(process.argv.slice(2)).then((status) => {
    process.exitCode = status;
  });
}
