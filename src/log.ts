// The agent's logger: bunyan JSON records, one per line, to the configured log file and, when a
// person is watching (stderr is a terminal) or no file is configured, to stderr as well.
import bunyan from 'bunyan';
import fs from 'node:fs';
import path from 'node:path';

export type Logger = bunyan;

export interface LoggerOptions {
  logFile: string | null;
  level?: bunyan.LogLevel;
  /** Defaults to process.stderr; tests pass their own stream. */
  stderr?: NodeJS.WritableStream & { isTTY?: boolean };
}

export function createLogger(options: LoggerOptions): Logger {
  const level = options.level ?? 'info';
  const stderr = options.stderr ?? process.stderr;
  const streams: bunyan.Stream[] = [];
  if (options.logFile !== null) {
    fs.mkdirSync(path.dirname(options.logFile), { recursive: true, mode: 0o750 });
    streams.push({ level, path: options.logFile });
  }
  if (options.logFile === null || stderr.isTTY === true) {
    streams.push({ level, stream: stderr });
  }
  return bunyan.createLogger({ name: 'coriolis-snapshot-agent', streams, serializers: bunyan.stdSerializers });
}

/** A logger that drops everything: for library code under test. */
export function silentLogger(): Logger {
  return bunyan.createLogger({ name: 'coriolis-snapshot-agent', streams: [], level: bunyan.FATAL + 1 });
}
