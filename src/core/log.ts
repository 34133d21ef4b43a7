// The agent's logger: bunyan JSON records, one per line, to the configured log file and, when a
// person is watching (stderr is a terminal) or no file is configured, to stderr as well. Under
// systemd no file is configured: stderr is the journal.
import bunyan from 'bunyan';
import fs from 'node:fs';
import path from 'node:path';

export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal'] as const;
export type LogLevel = typeof LOG_LEVELS[number];

export type Logger = bunyan;

export interface LoggerOptions {
  logFile: string | null;
  level?: LogLevel;
  /** With a log file, copy the records to stderr when it is a terminal (default true). */
  echoToTerminal?: boolean;
  /** Defaults to process.stderr; tests pass their own stream. */
  stderr?: NodeJS.WritableStream & { isTTY?: boolean };
}

/**
 * The log file as a stream that can be reopened after logrotate moved it. Child loggers share
 * this object, so one reopen serves them all (bunyan's own reopenFileStreams leaves every child
 * writing to the old, ended stream).
 */
class ReopenableFile {
  private stream: fs.WriteStream;
  private failed = false;

  constructor(private readonly file: string) {
    this.stream = this.open();
  }

  write(text: string): boolean {
    return this.stream.write(text);
  }

  reopen(): void {
    const previous = this.stream;
    this.stream = this.open();
    previous.end();
  }

  private open(): fs.WriteStream {
    const stream = fs.createWriteStream(this.file, { flags: 'a', mode: 0o640 });
    // A full or vanished disk must not kill the agent: say so once, on stderr.
    stream.on('error', (err) => {
      if (this.failed) return;
      this.failed = true;
      process.stderr.write(`coriolis-snapshot-agent: cannot write the log file ${this.file}: ${err.message}\n`);
    });
    stream.on('open', () => {
      this.failed = false;
    });
    return stream;
  }
}

export function createLogger(options: LoggerOptions): Logger {
  const level = options.level ?? 'info';
  const stderr = options.stderr ?? process.stderr;
  const streams: bunyan.Stream[] = [];
  if (options.logFile !== null) {
    fs.mkdirSync(path.dirname(options.logFile), { recursive: true, mode: 0o750 });
    streams.push({ level, stream: new ReopenableFile(options.logFile) as unknown as NodeJS.WritableStream });
  }
  if (options.logFile === null || (stderr.isTTY === true && options.echoToTerminal !== false)) {
    streams.push({ level, stream: stderr });
  }
  return bunyan.createLogger({ name: 'coriolis-snapshot-agent', streams, serializers: bunyan.stdSerializers });
}

/** Reopens the logger's file (SIGHUP after logrotate); a logger without one is left as it is. */
export function reopenLogFile(log: Logger): void {
  for (const { stream } of (log as unknown as { streams: Array<{ stream: unknown }> }).streams) {
    if (stream instanceof ReopenableFile) stream.reopen();
  }
}

/** A logger that drops everything: for library code under test. */
export function silentLogger(): Logger {
  return bunyan.createLogger({ name: 'coriolis-snapshot-agent', streams: [], level: bunyan.FATAL + 1 });
}
